//! The audit log: namespace changes with the identities that made them, refused requests,
//! queries by path, user and time, retention, and survival of a master kill -9.

use shardfs_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// The entries `shardfs audit … --json EXTRA` prints.
fn audit(c: &Cluster, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut after = vec!["--json"];
    after.extend_from_slice(extra);
    let (ok, out, err) = c.admin_around(&["audit"], &after);
    assert!(ok, "shardfs audit failed: {out}{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// The entries of `op` on `path`.
fn find<'a>(entries: &'a [serde_json::Value], op: &str, path: &str) -> Vec<&'a serde_json::Value> {
    entries
        .iter()
        .filter(|e| e["op"] == op && e["path"] == path)
        .collect()
}

fn one<'a>(entries: &'a [serde_json::Value], op: &str, path: &str) -> &'a serde_json::Value {
    let found = find(entries, op, path);
    assert!(
        !found.is_empty(),
        "no {op} of {path} in the audit log: {entries:#?}"
    );
    found[0]
}

#[test]
fn the_audit_log_names_who_changed_what_and_what_was_refused_across_a_master_kill() {
    let mut c = Cluster::start(3, "2+1");
    let first = c.credential("client.cred").identity.id;
    let second = c.join_client("second.cred", &[]).identity.id;
    let a = c.mount("a");
    let second_path = c.path("second.cred").display().to_string();
    let b = c.mount_with("b", &["--credentials", &second_path]);

    fs::create_dir(a.join("shared")).unwrap();
    fs::set_permissions(a.join("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    // Each mount creates, renames and removes a file of its own.
    for (mp, who) in [(&a, "a"), (&b, "b")] {
        let dir = mp.join("shared");
        fs::write(dir.join(format!("from-{who}")), format!("written by {who}")).unwrap();
        fs::rename(
            dir.join(format!("from-{who}")),
            dir.join(format!("moved-{who}")),
        )
        .unwrap();
        fs::remove_file(dir.join(format!("moved-{who}"))).unwrap();
    }
    // The second credential's root is squashed: its chown of a file is refused by the master.
    fs::write(b.join("shared/mine"), b"mine").unwrap();
    let r = std::os::unix::fs::chown(b.join("shared/mine"), Some(1234), None);
    assert_eq!(
        r.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EPERM)),
        "a squashed root's chown must be refused"
    );

    let check = |entries: &[serde_json::Value]| {
        for (who, cred, uid) in [("a", &first, 0), ("b", &second, 65534)] {
            let create = one(entries, "create", &format!("/shared/from-{who}"));
            let rename = one(entries, "rename", &format!("/shared/from-{who}"));
            let unlink = one(entries, "unlink", &format!("/shared/moved-{who}"));
            for e in [create, rename, unlink] {
                assert_eq!(e["credential"], **cred, "wrong credential: {e}");
                assert_eq!(e["uid"], uid, "wrong uid: {e}");
                assert_eq!(e["outcome"], "ok", "{e}");
                assert_eq!(e["refused"], false, "{e}");
                assert!(
                    e["host"].as_str().is_some_and(|h| h.contains('@')),
                    "no mount host: {e}"
                );
                assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
            }
            assert_eq!(rename["to"], format!("/shared/moved-{who}"), "{rename}");
            one(entries, "write", &format!("/shared/from-{who}"));
        }
        let chown = one(entries, "chown", "/shared/mine");
        assert_eq!(chown["credential"], *second, "{chown}");
        assert_eq!(chown["refused"], true, "{chown}");
        assert_eq!(chown["uid"], 65534, "{chown}");
        assert!(
            chown["detail"].as_str().unwrap().contains("uid=1234"),
            "{chown}"
        );
        assert!(
            chown["outcome"].as_str().unwrap().starts_with("Permission"),
            "{chown}"
        );
        one(entries, "mkdir", "/shared");
        one(entries, "chmod", "/shared");
    };
    let before = audit(&c, &["--path", "/shared"]);
    check(&before);
    // Entries come oldest first.
    let times: Vec<u64> = before
        .iter()
        .map(|e| e["time_ns"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not in time order");

    // Filters: by user, by path, by time.
    let of_second = audit(&c, &["--user", &second]);
    assert!(!of_second.is_empty());
    assert!(of_second
        .iter()
        .all(|e| e["credential"] == *second.as_str()));
    assert!(find(&of_second, "create", "/shared/from-a").is_empty());
    let by_uid = audit(&c, &["--user", "65534", "--path", "/shared"]);
    assert!(by_uid.iter().all(|e| e["uid"] == 65534));
    one(&by_uid, "unlink", "/shared/moved-b");
    assert!(audit(&c, &["--path", "/elsewhere"]).is_empty());
    assert!(audit(&c, &["--since", "2099-01-01"]).is_empty());
    one(&audit(&c, &["--since", "10m"]), "chown", "/shared/mine");
    let (ok, _, err) = c.admin_around(&["audit"], &["--since", "yesterday-ish"]);
    assert!(
        !ok && err.contains("--since"),
        "a bad --since must fail: {err}"
    );

    // Only an admin may read the log.
    let (ok, _, err) = c.admin_around(&["audit"], &["--credentials", &second_path]);
    assert!(!ok, "a client credential read the audit log");
    assert!(err.contains("admin"), "{err}");
    let refused_read = audit(&c, &["--user", &second]);
    assert!(
        refused_read
            .iter()
            .any(|e| e["op"] == "audit" && e["refused"] == true),
        "the refused read of the log is not in it"
    );

    // kill -9 the master: every entry is still there afterwards.
    c.kill_master();
    c.start_master();
    c.wait_nodes_up(3);
    let after = audit(&c, &["--path", "/shared"]);
    check(&after);
    assert!(after.len() >= before.len());
}

#[test]
fn audit_entries_past_the_retention_are_deleted_and_a_json_file_gets_every_entry() {
    let mut c = Cluster::start_with(
        3,
        "2+1",
        &[
            "--audit-retention-days",
            "0.00005",
            "--audit-file",
            "/dev/null",
        ],
    );
    // The file: a JSON line per entry. /dev/null above only checks the flag is taken; the
    // retention test needs the master's own record to age.
    let a = c.mount("a");
    fs::create_dir(a.join("old")).unwrap();
    one(&audit(&c, &[]), "mkdir", "/old");
    // 0.00005 days = 4.3 s: the entry goes within a few seconds more.
    wait_until(
        Duration::from_secs(30),
        "the old entry to be deleted",
        || find(&audit(&c, &[]), "mkdir", "/old").is_empty(),
    );
    c.kill_master();
    let file = c.path("audit.jsonl");
    c.master_args = vec!["--audit-file".into(), file.display().to_string()];
    c.start_master();
    c.wait_nodes_up(3);
    fs::create_dir(a.join("new")).unwrap();
    wait_until(Duration::from_secs(10), "the JSON line", || {
        fs::read_to_string(&file).is_ok_and(|s| {
            s.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|e| e["op"] == "mkdir" && e["path"] == "/new")
        })
    });
    one(&audit(&c, &[]), "mkdir", "/new");
}
