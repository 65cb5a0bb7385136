import pandas as pd
from taskweaver.plugin import Plugin, register_plugin


@register_plugin
class SaveTable(Plugin):
    def __call__(self, rows: int):
        df = pd.DataFrame({"month": [f"m{i}" for i in range(rows)], "sales": [10 * i for i in range(rows)]})
        self.ctx.add_artifact("sales", "sales.csv", "df", df, "generated sales table")
        return df, f"saved {rows} rows"
