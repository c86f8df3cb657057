//! The page around the charts: one stylesheet, light or dark as the reader's system is.

use crate::text::escape;

/// The stylesheet every volley page uses. Colours are variables, switched for dark
/// mode, so an SVG drawn once reads on either background.
pub const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1d2330;--muted:#6b7385;--bg:#ffffff;--grid:#e3e6ec;\
--axis:#8a93a6;--accent:#3b6fd8;--bad:#d0453b;--row:#f4f6f9}\
@media (prefers-color-scheme:dark){:root{--fg:#e4e7ee;--muted:#9aa3b5;--bg:#14181f;\
--grid:#2a313d;--axis:#5c6577;--accent:#78a0ff;--bad:#ff7b70;--row:#1c222b}}\
body{font:14px system-ui,sans-serif;margin:24px auto;padding:0 24px;color:var(--fg);\
background:var(--bg);max-width:1180px}\
h1{font-size:20px} h2{font-size:17px;margin-top:36px} h3{font-size:15px}\
figure{margin:24px 0} figcaption{font-weight:600;margin-bottom:8px}\
.wide{overflow-x:auto} table{border-collapse:collapse}\
td,th{padding:3px 12px 3px 0;text-align:left;vertical-align:top}\
table.grid{font-size:13px} table.grid td,table.grid th{padding:4px 8px;border-bottom:1px solid var(--grid);white-space:nowrap}\
table.grid td.n,table.grid th.n{text-align:right;font-variant-numeric:tabular-nums}\
.muted,.empty{color:var(--muted)} code{font-size:13px}\
.bar{fill:var(--accent)} .line{fill:none;stroke:var(--accent);stroke-width:2}\
.line-failed{fill:none;stroke:var(--bad);stroke-width:2}\
.axis{stroke:var(--axis)} .grid{stroke:var(--grid)} .zero{stroke:var(--axis);stroke-dasharray:4 3}\
.ci{stroke:var(--accent);stroke-width:2} .est{fill:var(--accent)}\
.run{fill:var(--bg);stroke:var(--fg);stroke-opacity:.7;stroke-width:1.2}\
svg text{font-size:12px;fill:var(--fg)}";

/// A whole self-contained page: `body` is trusted HTML (charts and tables built by
/// volley, with every outside text escaped); `title` is escaped here.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>{body}</body></html>\n",
        t = escape(title)
    )
}
