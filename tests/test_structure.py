"""The package's shape: no function too long to follow."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_ersm"
# Lines of body, docstring excluded: past this a function is cut into named
# steps.
MAX_BODY_LINES = 80


def body_lines(function):
    """Lines from the first statement after the docstring to the last."""
    body = function.body
    if (isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def long_functions():
    """`(module, function, line, body lines)` of every function of the
    package (methods and nested ones too) over `MAX_BODY_LINES`."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and body_lines(node) > MAX_BODY_LINES):
                found.append((module, node.name, node.lineno,
                              body_lines(node)))
    return found


def test_no_function_has_more_than_80_lines_of_body():
    too_long = [
        f"{module}:{line} {function}: {lines} lines"
        for module, function, line, lines in long_functions()
    ]
    assert not too_long, (
        f"Functions over {MAX_BODY_LINES} lines of body (docstring "
        f"excluded), to cut into named steps: {too_long}"
    )


def test_body_lines_leave_out_the_docstring():
    source = 'def f():\n    """Doc\n    string."""\n    a = 1\n\n    return a\n'
    assert body_lines(ast.parse(source).body[0]) == 3
