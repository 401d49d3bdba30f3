//! Malformed arguments: one line naming the argument and the expected form,
//! exit status 2, nothing written.

mod common;
use common::*;

fn assert_usage_error(args: &[&str], arg_name: &str, expected_form: &str, dir: &std::path::Path) {
    let before = std::fs::read_dir(dir).unwrap().count();
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    assert!(
        err.contains(arg_name),
        "{args:?}: does not name {arg_name}: {err}"
    );
    assert!(
        err.contains(expected_form),
        "{args:?}: does not give the form: {err}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        before,
        "{args:?} wrote something"
    );
}

#[test]
fn malformed_arguments_get_one_line_and_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("new-store");
    let st = p(&s);
    let rec = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = ["sim", "record", "--store", st, "--from", "-1h"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (rec(&["--to", "tomorrow-ish"]), "--to", "RFC 3339"),
        (rec(&["--bitrate", "4MB"]), "--bitrate", "4Mbit"),
        (rec(&["--segment", "sixty"]), "--segment", "60s"),
        (rec(&["--outage", "-30m"]), "--outage", "T1..T2"),
        (rec(&["--outage", "-10m..-20m"]), "--outage", "T1..T2"),
        (
            vec![
                "plan".into(),
                "--store".into(),
                st.into(),
                "--peer-store".into(),
                "x".into(),
            ],
            "--store",
            "hafill store",
        ),
        (
            vec![
                "store".into(),
                "ls".into(),
                "--store".into(),
                p(dir.path()).into(),
            ],
            "--store",
            "hafill store",
        ),
        (
            vec![
                "store".into(),
                "ls".into(),
                "--store".into(),
                "/nonexistent/x".into(),
                "--camera".into(),
                "../etc".into(),
            ],
            "--",
            "",
        ),
        (
            vec![
                "plan".into(),
                "--store".into(),
                "/tmp".into(),
                "--retention".into(),
                "30 parsecs".into(),
                "--peer-store".into(),
                "a=/tmp".into(),
            ],
            "--",
            "",
        ),
    ];
    for (args, name, form) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_usage_error(&args, name, form, dir.path());
    }
    assert!(!s.exists());
    // A path that is a file is not a store to create.
    let f = dir.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    let out = run(&["sim", "record", "--store", p(&f), "--from", "-1h"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a file"));
    // A camera id that would leave its directory.
    let out = run(&[
        "store",
        "verify",
        "--store",
        p(dir.path()),
        "--camera",
        "../../etc",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
