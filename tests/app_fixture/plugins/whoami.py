# A plugin written for TaskWeaver, unchanged: it must load without a `taskweaver` package installed.
from taskweaver.plugin import Plugin, register_plugin


@register_plugin
class WhoAmI(Plugin):
    def __call__(self, greeting: str = "Hello"):
        user = self.ctx.get_session_var("user_name", "anonymous")
        return f"{greeting}, {user}! ({self.config.get('suffix', '')})"
