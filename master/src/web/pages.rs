//! The HTML of the web UI: plain pages rendered here, one small inline script for the
//! buttons and uploads, no assets fetched from anywhere.

use shardfs_client::core::ListEntry;
use shardfs_common::proto::{Attr, FileKind, Health, NodeInfo};

/// Text safe inside HTML elements and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A path as it goes into a URL: each byte outside the unreserved set percent-encoded, `/`
/// kept between names.
pub fn url_path(path: &str) -> String {
    let mut o = String::new();
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                o.push(b as char)
            }
            b => o.push_str(&format!("%{b:02X}")),
        }
    }
    o
}

pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{n} B"),
        _ => format!("{v:.1} {}", UNITS[u]),
    }
}

fn when(secs: i64) -> String {
    let rem = secs.rem_euclid(86_400);
    format!(
        "{} {:02}:{:02} UTC",
        shardfs_common::proto::civil_date(secs),
        rem / 3600,
        rem % 3600 / 60
    )
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#222}\
header{background:#1d3557;color:#fff;padding:.6em 1em;display:flex;gap:1.5em;align-items:center}\
header a{color:#fff}main{padding:1em}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd}th a{color:inherit}\
td.n{text-align:right;font-variant-numeric:tabular-nums}nav.crumbs{margin-bottom:.8em}\
#drop{border:2px dashed #999;padding:1em;margin:1em 0;text-align:center}\
#drop.over{background:#eef}pre{background:#f6f8fa;padding:1em;overflow:auto}\
pre code.hljs{padding:0;background:transparent}\
img.preview,video{max-width:100%}button{margin-left:.3em}.err{color:#b00}";

const SCRIPT: &str = r#"
async function call(method, url, body) {
  const r = await fetch(url, {method, body, headers: {'X-ShardFS': '1'}});
  if (!r.ok) { alert(await r.text()); return false; }
  return true;
}
function here() { return document.body.dataset.dir; }
async function mkdir() {
  const n = document.getElementById('newdir').value;
  if (n && await call('POST', '/api/mkdir?path=' + encodeURIComponent(here() + n))) location.reload();
}
async function del(p) {
  if (await call('POST', '/api/delete?path=' + encodeURIComponent(p))) location.reload();
}
async function ren(p, old) {
  const n = prompt('New name', old);
  if (!n || n === old) return;
  const to = p.substring(0, p.length - old.length) + n;
  if (await call('POST', '/api/rename?from=' + encodeURIComponent(p) + '&to=' + encodeURIComponent(to))) location.reload();
}
async function upload(files) {
  const s = document.getElementById('status');
  for (const f of files) {
    s.textContent = 'uploading ' + f.name + ' …';
    const url = '/raw' + here().split('/').map(encodeURIComponent).join('/') + encodeURIComponent(f.name);
    if (!await call('PUT', url, f)) { s.textContent = 'upload of ' + f.name + ' failed'; return; }
  }
  s.textContent = 'uploaded';
  location.reload();
}
function highlight() {
  const c = document.querySelector('#text code[data-lang]');
  if (!c) return;
  const l = document.createElement('link');
  l.rel = 'stylesheet'; l.href = '/assets/highlight.css';
  document.head.append(l);
  const s = document.createElement('script');
  s.src = '/assets/highlight.js';
  s.onload = () => {
    if (c.dataset.lang !== 'auto') c.classList.add('language-' + c.dataset.lang);
    hljs.highlightElement(c);
  };
  document.head.append(s);
}
window.addEventListener('DOMContentLoaded', highlight);
// One listener for every row's buttons (no handler per row).
document.addEventListener('click', e => {
  const b = e.target.closest('button[data-op]');
  if (!b) return;
  if (b.dataset.op === 'ren') ren(b.dataset.path, b.dataset.name);
  else if (b.dataset.op === 'del') del(b.dataset.path);
});
window.addEventListener('DOMContentLoaded', () => {
  const d = document.getElementById('drop');
  if (!d) return;
  d.addEventListener('dragover', e => { e.preventDefault(); d.classList.add('over'); });
  d.addEventListener('dragleave', () => d.classList.remove('over'));
  d.addEventListener('drop', e => { e.preventDefault(); d.classList.remove('over'); upload(e.dataTransfer.files); });
  document.getElementById('pick').addEventListener('change', e => upload(e.target.files));
});
"#;

/// A whole page around `body`.
pub fn page(title: &str, who: Option<&str>, dir: &str, body: &str) -> String {
    let user = match who {
        Some(w) => format!(
            "<span>{}</span><a href=\"/files/\">Files</a><a href=\"/cluster\">Cluster</a>\
             <a href=\"/logout\">Sign out</a>",
            esc(w)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{} — ShardFS</title>\
         <style>{STYLE}</style><script>{SCRIPT}</script></head>\
         <body data-dir=\"{}\"><header><strong>ShardFS</strong>{user}</header>\
         <main>{body}</main></body></html>",
        esc(title),
        esc(dir)
    )
}

/// Links to each directory above `path` (which ends in `/` for a directory).
pub fn crumbs(path: &str) -> String {
    let mut out = String::from("<nav class=\"crumbs\"><a href=\"/files/\">/</a>");
    let mut at = String::from("/");
    let names: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, n) in names.iter().enumerate() {
        at.push_str(n);
        let dir = i + 1 < names.len() || path.ends_with('/');
        if dir {
            at.push('/');
        }
        out.push_str(&format!(
            " <a href=\"/files{}\">{}</a>{}",
            url_path(&at),
            esc(n),
            if dir { " /" } else { "" }
        ));
    }
    out.push_str("</nav>");
    out
}

/// How a listing is sorted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Name,
    Size,
    Modified,
}

impl Sort {
    pub fn parse(s: Option<&str>) -> Sort {
        match s {
            Some("size") => Sort::Size,
            Some("mtime") => Sort::Modified,
            _ => Sort::Name,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Size => "size",
            Sort::Modified => "mtime",
        }
    }
}

/// The listing of directory `path` (ending in `/`).
/// Rows one listing page shows: a browser lays out a table of a thousand rows in well under a
/// second, of ten thousand in seconds.
pub const PAGE_ROWS: usize = 1000;

/// The listing of directory `path` (ending in `/`), sorted, page `page` (from 0) of
/// [`PAGE_ROWS`] rows.
pub fn listing(
    path: &str,
    mut entries: Vec<ListEntry>,
    sort: Sort,
    desc: bool,
    page: usize,
) -> String {
    entries.sort_by(|a, b| {
        let o = match sort {
            Sort::Name => a.name.cmp(&b.name),
            Sort::Size => a.attr.size.cmp(&b.attr.size),
            Sort::Modified => a.attr.mtime.secs.cmp(&b.attr.mtime.secs),
        };
        // Directories first, then the chosen order.
        (b.attr.kind == FileKind::Dir)
            .cmp(&(a.attr.kind == FileKind::Dir))
            .then(if desc { o.reverse() } else { o })
    });
    let head = |s: Sort, label: &str| {
        let d = sort == s && !desc;
        format!(
            "<th><a href=\"?sort={}{}\">{label}{}</a></th>",
            s.key(),
            if d { "&amp;desc=1" } else { "" },
            match (sort == s, desc) {
                (true, false) => " ▲",
                (true, true) => " ▼",
                _ => "",
            }
        )
    };
    let total = entries.len();
    let pages = total.div_ceil(PAGE_ROWS).max(1);
    let page = page.min(pages - 1);
    let first = page * PAGE_ROWS;
    let shown_rows = &entries[first..total.min(first + PAGE_ROWS)];
    let mut rows = String::new();
    for e in shown_rows {
        let name = String::from_utf8_lossy(&e.name);
        let full = format!("{path}{name}");
        let is_dir = e.attr.kind == FileKind::Dir;
        let href = format!("/files{}{}", url_path(&full), if is_dir { "/" } else { "" });
        let shown = format!("{}{}", esc(&name), if is_dir { "/" } else { "" });
        let size = match is_dir {
            true => String::new(),
            false => human(e.attr.size),
        };
        let get = match is_dir {
            true => String::new(),
            false => format!(
                "<a href=\"/raw{}?download=1\" download>download</a>",
                url_path(&full)
            ),
        };
        // Names reach the script as data attributes, never inside script text.
        let (p, n) = (esc(&full), esc(&name));
        rows.push_str(&format!(
            "<tr><td><a class=\"entry\" href=\"{href}\">{shown}</a></td><td class=\"n\">{size}</td>\
             <td>{}</td><td>{}:{}</td><td>{get}\
             <button data-op=\"ren\" data-path=\"{p}\" data-name=\"{n}\">rename</button>\
             <button class=\"del\" data-op=\"del\" data-path=\"{p}\">delete</button></td></tr>",
            when(e.attr.mtime.secs),
            e.attr.uid,
            e.attr.gid,
        ));
    }
    format!(
        "{}<table><thead><tr>{}{}{}<th>Owner</th><th></th></tr></thead><tbody>{rows}</tbody></table>\
         {}\
         <p><input id=\"newdir\" placeholder=\"New folder name\"><button onclick=\"mkdir()\">New folder</button></p>\
         <div id=\"drop\">Drop files here to upload, or <input type=\"file\" id=\"pick\" multiple></div>\
         <p id=\"status\"></p>",
        crumbs(path),
        head(Sort::Name, "Name"),
        head(Sort::Size, "Size"),
        head(Sort::Modified, "Modified"),
        pager(sort, desc, page, pages, first, shown_rows.len(), total),
    )
}

/// What a file's preview shows, by its name and first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Image,
    Pdf,
    Audio,
    Video,
    Other,
}

/// The content type of a file by its name: what `/raw` answers with. Anything a browser
/// would run (HTML, SVG, scripts) goes out as plain text.
pub fn content_type(name: &str) -> (&'static str, Kind) {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => ("image/png", Kind::Image),
        Some("jpg" | "jpeg") => ("image/jpeg", Kind::Image),
        Some("gif") => ("image/gif", Kind::Image),
        Some("webp") => ("image/webp", Kind::Image),
        Some("pdf") => ("application/pdf", Kind::Pdf),
        Some("mp3") => ("audio/mpeg", Kind::Audio),
        Some("ogg" | "oga") => ("audio/ogg", Kind::Audio),
        Some("wav") => ("audio/wav", Kind::Audio),
        Some("flac") => ("audio/flac", Kind::Audio),
        Some("mp4" | "m4v") => ("video/mp4", Kind::Video),
        Some("webm") => ("video/webm", Kind::Video),
        _ => ("application/octet-stream", Kind::Other),
    }
}

/// Where a listing page is among its directory's entries, with links to the pages around it.
fn pager(
    sort: Sort,
    desc: bool,
    page: usize,
    pages: usize,
    first: usize,
    rows: usize,
    total: usize,
) -> String {
    if pages == 1 {
        return format!("<p>{total} entries</p>");
    }
    let link = |to: usize, label: &str, rel: &str| {
        format!(
            "<a rel=\"{rel}\" href=\"?sort={}{}&amp;page={}\">{label}</a>",
            sort.key(),
            if desc { "&amp;desc=1" } else { "" },
            to + 1
        )
    };
    let mut nav = format!(
        "<nav class=\"pages\" aria-label=\"pages\">entries {}–{} of {total} (page {} of {pages})",
        first + 1,
        first + rows,
        page + 1
    );
    if page > 0 {
        nav.push_str(&format!(" · {}", link(page - 1, "‹ previous", "prev")));
    }
    if page + 1 < pages {
        nav.push_str(&format!(" · {}", link(page + 1, "next ›", "next")));
    }
    nav.push_str("</nav>");
    nav
}

/// Text longer than this is highlighted only when its name says its language (guessing is
/// slow in the browser).
const AUTO_DETECT_MAX: usize = 32 << 10;

/// The highlight.js language of a text file by its name: `auto` to let it guess, none for
/// plain text.
pub fn language(name: &str) -> Option<&'static str> {
    let base = name.rsplit('/').next().unwrap_or(name);
    if matches!(base, "Makefile" | "makefile" | "GNUmakefile") {
        return Some("makefile");
    }
    if base == "Dockerfile" {
        return Some("bash");
    }
    let ext = base.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    Some(match ext.as_deref()? {
        "txt" | "log" | "csv" | "tsv" | "text" => return None,
        "rs" => "rust",
        "py" | "pyi" => "python",
        "js" | "mjs" | "cjs" | "jsx" => "javascript",
        "ts" | "tsx" => "typescript",
        "c" | "h" => "c",
        "cc" | "cpp" | "cxx" | "hpp" | "hh" => "cpp",
        "cs" => "csharp",
        "go" => "go",
        "java" => "java",
        "kt" | "kts" => "kotlin",
        "swift" => "swift",
        "m" => "objectivec",
        "rb" => "ruby",
        "php" => "php",
        "pl" | "pm" => "perl",
        "lua" => "lua",
        "r" => "r",
        "sh" | "bash" | "zsh" => "bash",
        "sql" => "sql",
        "json" => "json",
        "yaml" | "yml" => "yaml",
        "toml" | "ini" | "cfg" | "conf" => "ini",
        "md" | "markdown" => "markdown",
        "html" | "htm" | "xml" | "svg" => "xml",
        "css" => "css",
        "scss" => "scss",
        "less" => "less",
        "diff" | "patch" => "diff",
        "graphql" | "gql" => "graphql",
        "wat" => "wasm",
        _ => "auto",
    })
}

/// Whether bytes look like text (UTF-8 without NULs, allowing a character cut at the end).
pub fn is_text(head: &[u8]) -> bool {
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && head.len() - e.valid_up_to() < 4,
    }
}

/// The preview page of file `path` with attributes `a`; `text` is its beginning when it is
/// text.
pub fn preview(path: &str, a: &Attr, kind: Kind, text: Option<(String, bool)>) -> String {
    let raw = format!("/raw{}", url_path(path));
    let shown = match (kind, text) {
        (_, Some((t, cut))) => format!(
            "<pre id=\"text\"><code{}>{}</code></pre>{}",
            match language(path) {
                Some(l) if l != "auto" || t.len() <= AUTO_DETECT_MAX =>
                    format!(" data-lang=\"{l}\""),
                _ => String::new(),
            },
            esc(&t),
            if cut {
                "<p>(the beginning of the file; download it for the rest)</p>"
            } else {
                ""
            }
        ),
        (Kind::Image, _) => format!("<img class=\"preview\" id=\"image\" src=\"{raw}\" alt=\"\">"),
        (Kind::Pdf, _) => {
            format!(
                "<iframe src=\"{raw}\" style=\"width:100%;height:80vh\" title=\"PDF\"></iframe>"
            )
        }
        (Kind::Audio, _) => format!("<audio controls src=\"{raw}\"></audio>"),
        (Kind::Video, _) => format!("<video controls src=\"{raw}\"></video>"),
        _ => "<p>No preview for this kind of file.</p>".to_string(),
    };
    format!(
        "{}<p>{} · modified {} · owner {}:{} · mode {:o} · <a id=\"download\" href=\"{raw}?download=1\" download>download</a></p>{shown}",
        crumbs(path),
        human(a.size),
        when(a.mtime.secs),
        a.uid,
        a.gid,
        a.perm,
    )
}

/// The cluster page.
pub fn cluster(ec: &str, nodes: &[NodeInfo], h: &Health) -> String {
    let mut rows = String::new();
    for n in nodes {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&n.id.to_string()),
            esc(&n.addr),
            esc(&n.state.to_string()),
            human(n.used),
            human(n.free),
            human(n.capacity),
            n.shards
        ));
    }
    let (cap, free): (u64, u64) = nodes
        .iter()
        .fold((0, 0), |(c, f), n| (c + n.capacity, f + n.free));
    let repair = match h.missing_shards {
        0 => "nothing to repair".to_string(),
        m => format!("{m} shards waiting for repair"),
    };
    let scrub = match h.scrub_total {
        0 => String::new(),
        t => format!("<li>scrub: {} of {t} shards verified</li>", h.scrub_checked),
    };
    format!(
        "<h1>Cluster</h1><p>code {}, {} nodes, {} of {} free</p>\
         <ul id=\"health\"><li>{} blocks, <strong>{} degraded</strong>, {} unrecoverable</li>\
         <li>{repair}; {} shards rebuilt since the master started</li>\
         <li>{} files with small writes not yet sealed</li>{scrub}</ul>\
         <table id=\"nodes\"><thead><tr><th>Node</th><th>Address</th><th>State</th><th>Used</th>\
         <th>Free</th><th>Capacity</th><th>Shards</th></tr></thead><tbody>{rows}</tbody></table>",
        esc(ec),
        nodes.len(),
        human(free),
        human(cap),
        h.blocks,
        h.degraded,
        h.unrecoverable,
        h.repaired_shards,
        h.unsealed_files,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_encoded() {
        assert_eq!(
            esc("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
        assert_eq!(url_path("/a b/ü?#"), "/a%20b/%C3%BC%3F%23");
        assert_eq!(content_type("x.SVG").0, "application/octet-stream");
        assert_eq!(content_type("photo.JPG").1, Kind::Image);
        assert!(is_text("héllo".as_bytes()));
        assert!(
            is_text(&"héllo".as_bytes()[..2]),
            "a character cut at the end"
        );
        assert!(!is_text(b"a\0b"));
        assert_eq!(when(0), "1970-01-01 00:00 UTC");
        assert_eq!(when(1_764_633_600), "2025-12-02 00:00 UTC");
    }

    fn file_attr(ino: u64) -> Attr {
        Attr {
            version: 1,
            ..Attr::plain_file(ino, 1)
        }
    }

    #[test]
    fn a_long_listing_comes_in_pages() {
        let entries = || -> Vec<ListEntry> {
            (0..2500u64)
                .map(|i| ListEntry {
                    offset: i as i64 + 1,
                    name: format!("f{i:05}").into_bytes(),
                    attr: file_attr(i + 2),
                })
                .collect()
        };
        let rows = |html: &str| html.matches("<tr><td>").count();
        let p1 = listing("/d/", entries(), Sort::Name, false, 0);
        assert_eq!(rows(&p1), PAGE_ROWS);
        assert!(p1.contains("f00000") && !p1.contains("f01000"));
        assert!(p1.contains("entries 1–1000 of 2500") && p1.contains("page=2"));
        assert!(!p1.contains("rel=\"prev\""));
        let p3 = listing("/d/", entries(), Sort::Name, true, 2);
        assert_eq!(rows(&p3), 500);
        // Descending: the last page holds the first names.
        assert!(p3.contains("f00000") && !p3.contains("f02499"));
        assert!(p3.contains("desc=1&amp;page=2") && !p3.contains("rel=\"next\""));
        // A page past the end shows the last one.
        assert_eq!(rows(&listing("/d/", entries(), Sort::Name, false, 99)), 500);
    }

    #[test]
    fn a_hostile_name_stays_text_in_a_listing() {
        let name = "x');alert(1);('<img src=x onerror=alert(2)>";
        let e = ListEntry {
            offset: 1,
            name: name.as_bytes().to_vec(),
            attr: file_attr(2),
        };
        let html = listing("/d/", vec![e], Sort::Name, false, 0);
        assert!(!html.contains("alert(1);('"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("data-name=\"x&#39;);alert(1);(&#39;&lt;img"),
            "{html}"
        );
    }
}
