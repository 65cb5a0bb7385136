from taskweaver.plugin import Plugin, register_plugin


@register_plugin
class Greeter(Plugin):
    def __call__(self, prefix: str, punctuation: str | None = None) -> str:
        user = self.ctx.get_session_var("user_name", "anonymous")
        self.log("info", f"greeting {user}")
        end = punctuation or self.config.get("suffix_default", ".")
        return f"{prefix}, {user}{end}"
