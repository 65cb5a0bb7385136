from taskweaver.plugin import register_plugin


@register_plugin
def double(x):
    return 2 * x
