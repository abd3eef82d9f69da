"""Writes one script's section into BENCHMARKS.md.

Each comparison script owns the text between its markers, `<!-- NAME:begin -->` and
`<!-- NAME:end -->` (the section it passes includes them): a rerun replaces that text, and a
file without the section gets it appended.
"""
import os

HEADER = ("# tidepool benchmarks\n\nEvery section is written by the script it names; "
          "rerun the script to refresh it.\n")


def put_section(out, name, section):
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(out).read() if os.path.exists(out) else HEADER
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    open(out, "w").write(text)
    print(section)
