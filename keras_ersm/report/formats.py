"""The report's blocks (`content.report_blocks`) written as Markdown and
as an HTML page."""

from html import escape


def markdown(blocks):
    """The blocks of `content.report_blocks` as Markdown."""
    lines = []
    for kind, content in blocks:
        if kind in ("h1", "h2"):
            lines += ["#" * int(kind[1]) + " " + content, ""]
        elif kind == "p":
            lines += [content, ""]
        elif kind == "img":
            lines += [f"![{content}]({content})", ""]
        else:
            lines.append("| " + " | ".join(content["header"]) + " |")
            lines.append("|" + "---|" * len(content["header"]))
            for row in content["rows"]:
                lines.append("| " + " | ".join(str(v) for v in row) + " |")
            lines.append("")
    return "\n".join(lines)


def html(blocks):
    """The blocks of `content.report_blocks` as an HTML page."""
    parts = ["<!doctype html><meta charset='utf-8'><title>ERSM report</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
             "td,th{border:1px solid #ccc;padding:3px 8px}"
             "table{border-collapse:collapse}img{max-width:100%}</style>"]
    for kind, content in blocks:
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{escape(content)}</{kind}>")
        elif kind == "img":
            parts.append(f"<img src='{escape(content)}' alt=''>")
        else:
            header = "".join(f"<th>{escape(h)}</th>"
                             for h in content["header"])
            rows = "".join(
                "<tr>" + "".join(f"<td>{escape(str(v))}</td>"
                                 for v in row) + "</tr>"
                for row in content["rows"]
            )
            parts.append(f"<table><tr>{header}</tr>{rows}</table>")
    return "\n".join(parts)
