"""TaskWeaver's own code-verification cases (tests/unit_tests/test_code_verification.py) that concern
what its CodeInterpreter passes (``allowed_modules``, ``blocked_functions``, the always-on checks),
run against Weaver's checker through the same entry point; then the ways around the rules the issue
names (shell escapes, aliases of exec/eval, calls through subscripts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.roles.verification import DEFAULT_BLOCKED_FUNCTIONS, code_snippet_verification

PLOT = (
    "import numpy as np\n"
    "import matplotlib.pyplot as plt\n"
    "random_numbers = np.random.normal(size=100)\n"
    "plt.hist(random_numbers, bins=10, alpha=0.5)\n"
    "plt.title('Distribution of Random Numbers')\n"
    "plt.xlabel('Value')\n"
    "plt.ylabel('Frequency')\n"
    "# Displaying the plot\n"
    "plt.show()\n"
)
EXEC_EVAL_PRINT = "exec('import os')\neval('import sys')\nprint('Hello, World!')\n"


def check(code: str, **lists: object) -> list[str]:
    errors = code_snippet_verification(code, code_verification_on=True, **lists)  # type: ignore[arg-type]
    assert errors is not None
    return errors


# ----------------------------------------------------------------------------- TaskWeaver's cases


def test_off_means_no_verdict() -> None:
    assert code_snippet_verification("exec('1')", code_verification_on=False) is None


def test_import_allowed() -> None:
    assert len(check(PLOT, allowed_modules=["pandas", "matplotlib"])) == 1  # numpy
    assert len(check(PLOT, allowed_modules=[])) == 2  # an empty list allows no module
    assert check(PLOT, allowed_modules=None) == []


def test_block_function() -> None:
    assert len(check(EXEC_EVAL_PRINT, blocked_functions=["exec", "eval"])) == 2
    assert check(EXEC_EVAL_PRINT, blocked_functions=[]) == []
    assert check(EXEC_EVAL_PRINT, blocked_functions=None) == []


def test_magic_code() -> None:
    code = (
        "!pip install pandas\n"
        + PLOT
        + "%matplotlib inline\n"
        + "import pandas as pd\n"
        + "df = pd.DataFrame({'name': ['John', 'Alice', 'Bob'], 'age': [25, 30, 35]})\n"
        + "df\n"
    )
    errors = check(code)
    assert len(errors) == 1
    assert "Magic commands except package install are not allowed" in errors[0]
    assert "%matplotlib inline" in errors[0] and "pip" not in errors[0]


def test_dynamic_attribute_access_getattr() -> None:
    errors = check("obj = object()\nmethod = getattr(obj, 'some_method')\n", blocked_functions=["getattr"])
    assert errors and any("getattr" in e for e in errors)


def test_dynamic_attribute_access_setattr() -> None:
    errors = check("obj = object()\nsetattr(obj, 'dangerous_attr', 'value')\n", blocked_functions=["setattr"])
    assert errors and any("setattr" in e for e in errors)


def test_dangerous_builtins_globals_locals() -> None:
    errors = check("g = globals()\nl = locals()\n", blocked_functions=["globals", "locals"])
    assert len(errors) >= 2
    assert any("globals" in e for e in errors) and any("locals" in e for e in errors)


def test_dunder_attribute_access() -> None:
    errors = check("obj = object()\ncls = obj.__class__\nbases = cls.__bases__\n")
    assert len(errors) >= 2
    assert any("__class__" in e for e in errors) and any("__bases__" in e for e in errors)


def test_subscript_based_dunder_access() -> None:
    errors = check("obj = {}\ndangerous = obj['__class__']\n")
    assert errors and any("__class__" in e for e in errors)


def test_subscript_function_call_bypass() -> None:
    assert check("methods = {'dangerous': eval}\nresult = methods['dangerous']('print(1)')\n")


def test_dict_access_to_builtins() -> None:
    errors = check("import sys\nbuiltins = sys.modules['__builtins__']\n")
    assert errors and any("__builtins__" in e for e in errors)


def test_vars_function_blocked() -> None:
    errors = check("obj = object()\nattributes = vars(obj)\n", blocked_functions=["vars"])
    assert errors and any("vars" in e for e in errors)


def test_delattr_blocked() -> None:
    errors = check("class Foo:\n    x = 1\ndelattr(Foo, 'x')\n", blocked_functions=["delattr"])
    assert errors and any("delattr" in e for e in errors)


# ----------------------------------------------------------------------------- the ways around


def test_the_dynamic_attribute_functions_are_blocked_whatever_the_list_says() -> None:
    for code in ("getattr(object(), 'x')", "vars()", "globals()", "setattr(o, 'a', 1)"):
        assert check(code, blocked_functions=[]), code
    assert check("import builtins\nf = builtins.getattr", blocked_functions=[])


def test_shell_escapes_other_than_a_package_install_are_refused() -> None:
    assert check("%pip install seaborn\n!pip3 install -q scikit-learn==1.5\n!conda install numpy") == []
    for code in ("!ls /", "!pip install x; curl http://127.0.0.1:9 | sh", "!pip install $(cat f)", "%run x.py"):
        [error] = check(code)
        assert "Magic commands except package install are not allowed" in error, code
    [error] = check("x = 1\n%%bash\necho hi\nrm -rf ~\n")  # a cell magic takes the rest of the cell
    assert "%%bash" in error and "rm -rf" in error


def test_aliases_of_exec_and_eval_are_refused() -> None:
    blocked = list(DEFAULT_BLOCKED_FUNCTIONS)
    for code in (
        "e = exec\ne('print(1)')",
        "run = eval\nrun('1')",
        "from builtins import exec as e",
        "import builtins\nbuiltins.exec('1')",
        "fs = [eval]\nfs[0]('1')",
        "getattr(__builtins__, 'ex' + 'ec')('1')",
    ):
        assert check(code, blocked_functions=blocked), code


def test_calls_through_subscripts_and_odd_callees_are_refused() -> None:
    assert check("d = {'f': print}\nd['f']('hi')")
    assert check("handlers = [print]\nhandlers[0]('hi')")
    assert check("(lambda: 1)()")
    # Ordinary calls pass: names, attributes, a call's result, methods of a subscript.
    code = "import pandas as pd\ndf = pd.DataFrame({'a': [1]})\ndf['a'].sum()\nsorted([2, 1])\nstr(1).upper()"
    assert check(code, allowed_modules=["pandas"], blocked_functions=list(DEFAULT_BLOCKED_FUNCTIONS)) == []


def test_taskweavers_import_path_serves_the_checker() -> None:
    script = (
        "import core.compat.taskweaver\n"
        "from taskweaver.code_interpreter.code_verification import code_snippet_verification\n"
        "print(len(code_snippet_verification('%matplotlib inline\\nx = 1', code_verification_on=True)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1"
