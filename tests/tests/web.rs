//! The web UI in a real headless Chromium (Debian's chromium and chromedriver, driven over
//! the WebDriver protocol): signed in through the link `shardfs web` prints, it lists a
//! directory written on a mount, previews text and an image, downloads a file byte-identical,
//! uploads one that then reads identical on the mount, renames and deletes; signed out it
//! lists nothing, and a user's session does not show another user's 0700 directory.
//! Screenshots of the main pages go to $SHARDFS_SCREENSHOTS (docs/screenshots when they are
//! refreshed by hand), else the test's directory.

use serde_json::{json, Value};
use shardfs_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A 2×1 PNG (one red, one blue pixel).
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x7b, 0x40, 0xe8,
    0xdd, 0x00, 0x00, 0x00, 0x0f, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xc0,
    0xf0, 0x1f, 0x08, 0x00, 0x00, 0x0e, 0xfc, 0x02, 0xfe, 0xa7, 0x87, 0x1d, 0x2b, 0x00, 0x00, 0x00,
    0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// A chromedriver and one browser session in it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start(profile: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) must be installed");
        let base = format!("http://127.0.0.1:{port}");
        wait_until(Duration::from_secs(20), "chromedriver", || {
            ureq::get(&format!("{base}/status")).call().is_ok()
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--window-size=1200,800",
                    format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v: Value = serde_json::from_str(
            &ureq::post(&format!("{base}/session"))
                .set("Content-Type", "application/json")
                .send_string(&caps.to_string())
                .expect("a browser session")
                .into_string()
                .unwrap(),
        )
        .unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            base,
            session,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let r = match body {
            Some(b) => ureq::request(method, &url)
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => ureq::request(method, &url).call(),
        };
        let r = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("webdriver {method} {path}: {e}"),
        };
        let v: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn source(&self) -> String {
        self.call("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn js_async(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn find(&self, using: &str, value: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": using, "value": value})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {value}: {v}"))
            .to_string()
    }

    fn click(&self, el: &str) {
        self.call("POST", &format!("/element/{el}/click"), Some(json!({})));
    }

    fn screenshot(&self, to: &Path) {
        let v = self.call("GET", "/screenshot", None);
        let b64 = v.as_str().expect("a screenshot");
        let tmp = to.with_extension("b64");
        fs::write(&tmp, b64).unwrap();
        sh_ok(&format!(
            "base64 -d {} > {} && rm {}",
            tmp.display(),
            to.display(),
            tmp.display()
        ));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn sha256(p: &Path) -> String {
    sh_ok(&format!("sha256sum {}", p.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `shardfs web` for uid:gid with the harness's client credential: the sign-in link.
fn login_link(c: &Cluster, uid: u32) -> String {
    let (ok, out, err) = c.admin_around(
        &["web"],
        &[
            "--uid",
            &uid.to_string(),
            "--gid",
            &uid.to_string(),
            "--credentials",
            &c.path("client.cred").display().to_string(),
        ],
    );
    assert!(ok, "shardfs web failed: {out}{err}");
    out.trim().to_string()
}

#[test]
fn the_web_ui_in_a_browser_lists_previews_downloads_uploads_renames_and_deletes() {
    let mut c = Cluster::start_with(6, "4+2", &["--http", "127.0.0.1:0"]);
    let http = fs::read_to_string(c.path("master/http.addr"))
        .unwrap()
        .trim()
        .to_string();
    let site = format!("http://{http}");
    let mp = c.mount("m");
    // What a user (uid 1000) has, and what another (uid 2000) keeps to themself.
    let docs = mp.join("docs");
    fs::create_dir(&docs).unwrap();
    fs::write(
        docs.join("readme.txt"),
        "Hello from ShardFS\n<script>alert('not run')</script>\n",
    )
    .unwrap();
    fs::write(docs.join("pic.png"), PNG).unwrap();
    const CODE: &str = "fn main() {\n    let answer = 42; // <b>not bold</b>\n}\n";
    fs::write(docs.join("main.rs"), CODE).unwrap();
    fs::write(docs.join("data.bin"), random_bytes(1, 3 << 20)).unwrap();
    fs::write(docs.join("victim.txt"), "to be deleted\n").unwrap();
    fs::write(docs.join("old-name.txt"), "to be renamed\n").unwrap();
    sh_ok(&format!("chown -R 1000:1000 {}", docs.display()));
    let secret = mp.join("secret");
    fs::create_dir(&secret).unwrap();
    fs::write(secret.join("hidden-name.txt"), "private\n").unwrap();
    sh_ok(&format!("chown -R 2000:2000 {}", secret.display()));
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();

    let shots: PathBuf = std::env::var_os("SHARDFS_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| c.path("screenshots"));
    fs::create_dir_all(&shots).unwrap();
    let profile = c.path("chromium-profile");
    let b = Browser::start(&profile);

    // Signed out: nothing is listed.
    b.go(&format!("{site}/files/docs/"));
    let s = b.source();
    assert!(s.contains("not signed in"), "{s}");
    assert!(!s.contains("readme.txt"), "listed without signing in: {s}");

    // The link signs in (once) and lands on the root listing.
    let link = login_link(&c, 1000);
    b.go(&link);
    let url = b.call("GET", "/url", None);
    assert!(
        url.as_str().unwrap().ends_with("/files/"),
        "after sign-in: {url}"
    );
    assert!(b.source().contains("docs/"));
    let again = ureq::get(&link).call();
    assert!(
        matches!(again, Err(ureq::Error::Status(401, _))),
        "a sign-in link works once"
    );

    // The listing of a directory written on the mount.
    b.go(&format!("{site}/files/docs/"));
    let names: Value =
        b.js("return Array.from(document.querySelectorAll('a.entry')).map(a => a.textContent);");
    let names: Vec<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for want in ["readme.txt", "pic.png", "data.bin", "victim.txt"] {
        assert!(names.contains(&want), "{want} not listed: {names:?}");
    }
    b.screenshot(&shots.join("listing.png"));

    // A text preview, escaped (the script in the file is text, not run).
    b.go(&format!("{site}/files/docs/readme.txt"));
    let text = b.js("return document.getElementById('text').textContent;");
    assert!(
        text.as_str().unwrap().contains("Hello from ShardFS")
            && text.as_str().unwrap().contains("<script>"),
        "{text}"
    );
    assert_eq!(
        b.js("return document.querySelectorAll('main script').length;"),
        json!(0)
    );
    b.screenshot(&shots.join("preview-text.png"));

    // Source code is highlighted (by the bundled highlight.js, no network), its text intact.
    b.go(&format!("{site}/files/docs/main.rs"));
    wait_until(Duration::from_secs(10), "highlighting", || {
        b.js("return document.querySelectorAll('#text .hljs-keyword').length;")
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    assert_eq!(
        b.js("return document.querySelector('#text code').textContent;"),
        json!(CODE)
    );
    assert_eq!(
        b.js("return document.querySelectorAll('#text b').length;"),
        json!(0),
        "markup in the file became markup on the page"
    );
    b.screenshot(&shots.join("preview-code.png"));
    // Plain text is not.
    b.go(&format!("{site}/files/docs/readme.txt"));
    assert_eq!(
        b.js("return document.querySelectorAll('#text [class^=hljs]').length;"),
        json!(0)
    );

    // An image preview, decoded by the browser.
    b.go(&format!("{site}/files/docs/pic.png"));
    wait_until(Duration::from_secs(10), "the image", || {
        b.js("const i = document.getElementById('image'); return i.complete && i.naturalWidth;")
            == json!(2)
    });
    b.screenshot(&shots.join("preview-image.png"));

    // A download through the page's link, byte-identical (hashed in the browser).
    b.go(&format!("{site}/files/docs/data.bin"));
    let got = b.js_async(
        "const done = arguments[arguments.length - 1];
         fetch(document.getElementById('download').href)
           .then(r => r.arrayBuffer())
           .then(b => crypto.subtle.digest('SHA-256', b))
           .then(h => done(Array.from(new Uint8Array(h)).map(x => x.toString(16).padStart(2, '0')).join('')))
           .catch(e => done('failed: ' + e));",
    );
    assert_eq!(got.as_str().unwrap(), sha256(&docs.join("data.bin")));

    // An upload through the page's file input: it reads identical on the mount.
    let local = c.path("upload.bin");
    fs::write(&local, random_bytes(2, (2 << 20) + 12_345)).unwrap();
    b.go(&format!("{site}/files/docs/"));
    let pick = b.find("css selector", "#pick");
    b.call(
        "POST",
        &format!("/element/{pick}/value"),
        Some(json!({"text": local.display().to_string()})),
    );
    wait_until(Duration::from_secs(30), "the upload on the mount", || {
        fs::metadata(docs.join("upload.bin")).is_ok_and(|m| m.len() == (2 << 20) + 12_345)
    });
    assert_eq!(
        sha256(&docs.join("upload.bin")),
        sha256(&local),
        "upload changed the bytes"
    );
    let meta = fs::metadata(docs.join("upload.bin")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        1000,
        "uploaded as the user"
    );

    // Rename through the prompt, delete through the button.
    b.go(&format!("{site}/files/docs/"));
    let ren = b.find(
        "xpath",
        "//tr[td/a[text()='old-name.txt']]//button[text()='rename']",
    );
    b.click(&ren);
    b.call("POST", "/alert/text", Some(json!({"text": "new-name.txt"})));
    b.call("POST", "/alert/accept", Some(json!({})));
    wait_until(Duration::from_secs(10), "the rename on the mount", || {
        docs.join("new-name.txt").exists() && !docs.join("old-name.txt").exists()
    });
    b.go(&format!("{site}/files/docs/"));
    let del = b.find(
        "xpath",
        "//tr[td/a[text()='victim.txt']]//button[@class='del']",
    );
    b.click(&del);
    wait_until(Duration::from_secs(10), "the delete on the mount", || {
        !docs.join("victim.txt").exists()
    });

    // Another user's 0700 directory: its name is in the root listing (as for ls), its
    // content is not shown.
    b.go(&format!("{site}/files/secret/"));
    let s = b.source();
    assert!(
        !s.contains("hidden-name.txt"),
        "another user's file shown: {s}"
    );
    let status = |path: &str| {
        b.js_async(&format!(
            "const done = arguments[arguments.length - 1];
             fetch('{path}').then(r => done(r.status));"
        ))
    };
    assert_eq!(status("/files/secret/"), json!(403));
    assert_eq!(status("/raw/secret/hidden-name.txt"), json!(403));
    let direct = ureq::get(&format!("{site}/raw/secret/hidden-name.txt")).call();
    assert!(matches!(direct, Err(ureq::Error::Status(401, _))));

    // The cluster page: every node.
    b.go(&format!("{site}/cluster"));
    assert_eq!(
        b.js("return document.querySelectorAll('#nodes tbody tr').length;"),
        json!(6)
    );
    b.screenshot(&shots.join("cluster.png"));

    // A change without the header a page of another site cannot send is refused.
    let forged = b.js_async(
        "const done = arguments[arguments.length - 1];
         fetch('/api/delete?path=/docs/readme.txt', {method: 'POST'}).then(r => done(r.status));",
    );
    assert_eq!(forged, json!(403));
    assert!(docs.join("readme.txt").exists());

    // Signed out: the session is gone.
    b.go(&format!("{site}/logout"));
    b.go(&format!("{site}/files/docs/"));
    assert!(b.source().contains("not signed in"));
}

/// `shardfs share ARGS…` (as `shardfs share SUB MASTER REST…`) for uid 1000 with the
/// harness's client credential: (success, stdout + stderr).
fn share(c: &Cluster, sub: &str, rest: &[&str]) -> (bool, String) {
    let cred = c.path("client.cred").display().to_string();
    let mut after: Vec<&str> = rest.to_vec();
    after.extend(["--uid", "1000", "--gid", "1000", "--credentials", &cred]);
    let (ok, out, err) = c.admin_around(&["share", sub], &after);
    (ok, format!("{out}{err}"))
}

/// Status and body of a GET with no credentials at all.
fn fetch(url: &str) -> (u16, Vec<u8>) {
    match ureq::get(url).call() {
        Ok(r) => {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut r.into_reader(), &mut body).unwrap();
            (200, body)
        }
        Err(ureq::Error::Status(code, _)) => (code, Vec::new()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

#[test]
fn a_share_link_downloads_without_credentials_until_it_expires_or_is_revoked() {
    let mut c = Cluster::start_with(6, "4+2", &["--http", "127.0.0.1:0"]);
    let mp = c.mount("m");
    let data = random_bytes(3, (5 << 20) + 7);
    fs::write(mp.join("report.bin"), &data).unwrap();
    sh_ok(&format!(
        "chown 1000:1000 {}",
        mp.join("report.bin").display()
    ));
    let (ok, out) = share(&c, "create", &["/report.bin", "--expires", "3600"]);
    assert!(ok, "{out}");
    let url = out.lines().next().unwrap().trim().to_string();
    assert!(url.contains("/s/"), "{url}");
    let (code, body) = fetch(&url);
    assert_eq!(code, 200);
    assert!(body == data, "the link's bytes differ from the file");

    // A tampered link, a short one, and one with a path around it: nothing.
    let mut tampered = url.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    assert_eq!(fetch(&tampered).0, 404);
    assert_eq!(fetch(&url[..url.len() - 2]).0, 404);
    assert_ne!(fetch(&format!("{url}/../../files/")).0, 200);

    // It survives a master restart (the master's HTTP port changes here; the secret does not).
    c.kill_master();
    c.start_master();
    c.wait_nodes_up(6);
    let http = fs::read_to_string(c.path("master/http.addr"))
        .unwrap()
        .trim()
        .to_string();
    let secret = url.rsplit('/').next().unwrap().to_string();
    let url = format!("http://{http}/s/{secret}");
    wait_until(Duration::from_secs(30), "the link after a restart", || {
        fetch(&url).0 == 200
    });
    assert!(fetch(&url).1 == data);

    // The maker may no longer read the file: the link gives nothing.
    let f = mp.join("report.bin");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    sh_ok(&format!("chown 2000:2000 {}", f.display()));
    assert_eq!(fetch(&url).0, 403);
    sh_ok(&format!("chown 1000:1000 {}", f.display()));
    assert_eq!(fetch(&url).0, 200);
    // Nor can one share what one cannot read.
    let (ok, out) = {
        fs::write(mp.join("private.bin"), b"x").unwrap();
        fs::set_permissions(mp.join("private.bin"), fs::Permissions::from_mode(0o600)).unwrap();
        share(&c, "create", &["/private.bin"])
    };
    assert!(!ok, "shared a file its maker cannot read: {out}");

    // Listed, then revoked: refused from then on.
    let (ok, out) = share(&c, "list", &["--json"]);
    assert!(ok, "{out}");
    let listed: Vec<Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["path"], "/report.bin");
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let (ok, out) = share(&c, "revoke", &[&id]);
    assert!(ok, "{out}");
    assert_eq!(fetch(&url).0, 404);

    // Expiry.
    let (ok, out) = share(&c, "create", &["/report.bin", "--expires", "2"]);
    assert!(ok, "{out}");
    let short = out.lines().next().unwrap().trim().to_string();
    assert_eq!(fetch(&short).0, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fetch(&short).0, 404, "an expired link still works");
    let (ok, out) = share(&c, "create", &["/report.bin", "--expires", "0"]);
    assert!(!ok, "a link that never works was made: {out}");

    // With a password: a form, the file only for the right one.
    std::env::set_var("SHARDFS_SHARE_PASSWORD", "correct horse");
    let (ok, out) = share(&c, "create", &["/report.bin", "--password"]);
    std::env::remove_var("SHARDFS_SHARE_PASSWORD");
    assert!(ok, "{out}");
    let locked = out.lines().next().unwrap().trim().to_string();
    let (code, body) = fetch(&locked);
    assert_eq!(code, 401, "a password link answered without one");
    assert!(body.is_empty() || !body.starts_with(&data[..16]));
    let post = |pw: &str| match ureq::post(&locked).send_form(&[("password", pw)]) {
        Ok(r) => {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut r.into_reader(), &mut b).unwrap();
            (200, b)
        }
        Err(ureq::Error::Status(code, _)) => (code, Vec::new()),
        Err(e) => panic!("POST: {e}"),
    };
    assert_eq!(post("wrong").0, 403);
    let (code, body) = post("correct horse");
    assert_eq!(code, 200);
    assert!(body == data, "the password link's bytes differ");

    // Guessing: a link takes ten password tries a minute from everyone together, then
    // answers 429 with Retry-After, even to the right password.
    let mut wrong = 0;
    let limited = loop {
        let r = ureq::post(&locked).send_form(&[("password", "guess")]);
        match r {
            Err(ureq::Error::Status(403, _)) => wrong += 1,
            Err(ureq::Error::Status(429, r)) => break r,
            other => panic!("a wrong password answered {other:?}"),
        }
        assert!(
            wrong <= 10,
            "{wrong} wrong passwords in a row were all checked"
        );
    };
    let retry: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a 429 says when to retry");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(post("correct horse").0, 429, "the limit let a try through");

    // Sign-in links: one client gets twenty tries a minute (password tries included).
    let http = url.split('/').nth(2).unwrap().to_string();
    let mut refused = 0;
    loop {
        match fetch(&format!("http://{http}/login?t={}", "ab".repeat(32))).0 {
            401 => refused += 1,
            429 => break,
            other => panic!("an unknown sign-in link answered {other}"),
        }
        assert!(
            refused <= 20,
            "{refused} unknown sign-in links in a row were all tried"
        );
    }
}

/// The members of a zip archive and the sha256 of each (directories end with `/`, no hash),
/// read by Python's zipfile (which also checks every member's CRC).
fn unzip(zip: &[u8]) -> std::collections::BTreeMap<String, String> {
    let f = tempfile::NamedTempFile::new().unwrap();
    fs::write(f.path(), zip).unwrap();
    let script = "import sys, zipfile, hashlib, json\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        assert z.testzip() is None\n\
        print(json.dumps({i.filename: ('' if i.is_dir() else hashlib.sha256(z.read(i)).hexdigest()) for i in z.infolist()}))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(f.path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "not a valid zip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sha256_of(b: &[u8]) -> String {
    let f = tempfile::NamedTempFile::new().unwrap();
    fs::write(f.path(), b).unwrap();
    sha256(f.path())
}

#[test]
fn a_directory_share_link_downloads_a_zip_of_what_its_maker_may_read() {
    let mut c = Cluster::start_with(6, "4+2", &["--http", "127.0.0.1:0"]);
    let mp = c.mount("m");
    let tree = mp.join("tree");
    fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    fs::create_dir_all(tree.join("empty")).unwrap();
    let big = random_bytes(5, (3 << 20) + 11);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", b"alpha\n".to_vec()),
        ("sub/big.bin", big),
        ("sub/deeper/z.txt", b"zed\n".to_vec()),
        ("sub/zero", Vec::new()),
    ];
    for (name, bytes) in &files {
        fs::write(tree.join(name), bytes).unwrap();
    }
    sh_ok(&format!("chown -R 1000:1000 {}", tree.display()));
    // Not the maker's to read: left out of the archive.
    fs::write(tree.join("sub/theirs.txt"), "private\n").unwrap();
    sh_ok(&format!(
        "chown 2000:2000 {}",
        tree.join("sub/theirs.txt").display()
    ));
    fs::set_permissions(
        tree.join("sub/theirs.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    // A directory the maker may list but not search: its names are readable, its files not.
    fs::create_dir(tree.join("noexec")).unwrap();
    fs::write(tree.join("noexec/inside.txt"), "not through a path\n").unwrap();
    sh_ok(&format!(
        "chown -R 1000:1000 {}",
        tree.join("noexec").display()
    ));
    fs::set_permissions(tree.join("noexec"), fs::Permissions::from_mode(0o644)).unwrap();

    let (ok, out) = share(&c, "create", &["/tree", "--expires", "600"]);
    assert!(ok, "{out}");
    let url = out.lines().next().unwrap().trim().to_string();
    let (code, zip) = fetch(&url);
    assert_eq!(code, 200);
    let members = unzip(&zip);
    let mut want: std::collections::BTreeMap<String, String> = files
        .iter()
        .map(|(n, b)| (n.to_string(), sha256_of(b)))
        .collect();
    for d in ["sub/", "sub/deeper/", "empty/", "noexec/"] {
        want.insert(d.to_string(), String::new());
    }
    assert_eq!(
        members, want,
        "the archive is not the maker's view of the tree"
    );

    // Later changes show in the next download; a directory the maker may no longer read
    // gives nothing.
    fs::write(tree.join("new.txt"), "new\n").unwrap();
    sh_ok(&format!(
        "chown 1000:1000 {}",
        tree.join("new.txt").display()
    ));
    assert!(unzip(&fetch(&url).1).contains_key("new.txt"));
    sh_ok(&format!("chown 2000:2000 {}", tree.display()));
    fs::set_permissions(&tree, fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(fetch(&url).0, 403);
}
