from taskweaver.plugin import Plugin, register_plugin


@register_plugin
class Broken(Plugin)
    def __call__(self):
        return 1
