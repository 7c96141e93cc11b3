"""Parse an sftlab page into its tags and the text of its <mark> elements (the highlighted
tokens), for the page tests that check structure without a browser."""

from __future__ import annotations

from html.parser import HTMLParser


class Parts(HTMLParser):
    """Every tag with its attributes, and the text inside <mark> elements."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.marks: list[str] = []
        self._in_mark = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_mark = tag == "mark"

    def handle_endtag(self, tag):
        if tag == "mark":
            self._in_mark = False

    def handle_data(self, data):
        if self._in_mark:
            self.marks.append(data)


def parse(html: str) -> Parts:
    parts = Parts()
    parts.feed(html)
    return parts
