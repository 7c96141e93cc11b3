"""Self-contained HTML pages (audit now; run and eval reports later): one file each, every
script, style and chart inlined, so a page opens offline with no server and makes no request."""
