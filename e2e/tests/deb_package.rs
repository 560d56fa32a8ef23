//! The Debian package as an operator gets it: `scripts/build-deb` run on this build's binaries,
//! then its metadata and contents read with `dpkg-deb`, its systemd units checked with
//! `systemd-analyze verify` and `security`, and the package installed with `dpkg --root` into a
//! scratch root (maintainer scripts included: they honour `DPKG_ROOT`), where `tollgate -dump`
//! must describe the plugin to Kong, the shipped configs must pass `check-config`, and then purged.
//! The proxy-wasm filter (`tollgate_wasm.wasm`, built here for wasm32-wasip1 with `--profile
//! wasm`) and its schema must land where the shipped kong.conf's `wasm_filters_path` points; a
//! package without the filter is not built at all.
//!
//! It packages the debug binaries with `--fast` (debug info stripped from the copies, gzip -1): the
//! layout, metadata, units and scripts are the same as for the release package `scripts/package`
//! builds from static musl binaries, and the test stays in seconds instead of the minutes a release
//! build of three binaries costs. `scripts/package` checks its own static binaries (machine,
//! no interpreter, `tollgate -dump` runs).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tollgate_e2e::kong::process::query_info;
use tollgate_e2e::stack::{binary, workspace_root};

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// The filter as `scripts/package` builds it (once per test process).
fn filter_wasm() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            run(
                Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                    .args([
                        "build",
                        "-p",
                        "tollgate-wasm-filter",
                        "--target",
                        "wasm32-wasip1",
                        "--profile",
                        "wasm",
                    ])
                    .current_dir(&root),
            );
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"))
                .join("wasm32-wasip1/wasm/tollgate_wasm.wasm")
        })
        .clone()
}

/// `scripts/build-deb` on this build's binaries and the filter at `wasm`, into `dir`.
fn build_deb(dir: &Path, wasm: &Path) -> Output {
    let bins = dir.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for name in ["tollgate", "tollgate-agent", "tollgate-billing"] {
        let link = bins.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(binary(name), link).unwrap();
        }
    }
    Command::new(workspace_root().join("scripts/build-deb"))
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--wasm")
        .arg(wasm)
        .arg("--out")
        .arg(dir)
        .arg("--fast")
        .output()
        .unwrap()
}

#[test]
fn no_package_is_built_without_the_wasm_filter() {
    let tmp = tempfile::tempdir().unwrap();
    let debs = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "deb")
            })
            .count()
    };
    // Missing.
    let missing = tmp.path().join("nowhere/tollgate_wasm.wasm");
    let out = build_deb(tmp.path(), &missing);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "built without the filter: {err}");
    assert!(
        err.contains(&format!(
            "the proxy-wasm filter {} is missing",
            missing.display()
        )),
        "{err}"
    );
    assert_eq!(debs(tmp.path()), 0);
    // Present but not a WebAssembly module (an empty or truncated build).
    let fake = tmp.path().join("fake/tollgate_wasm.wasm");
    std::fs::create_dir_all(fake.parent().unwrap()).unwrap();
    std::fs::write(&fake, b"not wasm").unwrap();
    let out = build_deb(tmp.path(), &fake);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "built with a non-module: {err}");
    assert!(err.contains("is not a WebAssembly module"), "{err}");
    assert_eq!(debs(tmp.path()), 0);
}

/// Builds the package from this build's binaries and filter into `dir`.
fn build_package(dir: &Path) -> PathBuf {
    let out = build_deb(dir, &filter_wasm());
    assert!(
        out.status.success(),
        "scripts/build-deb failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim(),
    )
}

/// `Key=Value` lines of a unit file, in order (a key may repeat), with their section.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
        } else if let Some((k, v)) = line.split_once('=') {
            entries.push((section.clone(), k.to_owned(), v.to_owned()));
        }
    }
    entries
}

#[test]
fn the_deb_installs_tollgate_where_kong_looks_with_hardened_services() {
    let tmp = tempfile::tempdir().unwrap();
    let deb = build_package(tmp.path());
    assert!(deb.exists(), "{}", deb.display());

    // Metadata.
    let info = stdout(Command::new("dpkg-deb").arg("-I").arg(&deb));
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in\n{info}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "tollgate");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Architecture"), arch.trim());
    assert!(field("Installed-Size").parse::<u64>().unwrap() > 1000);

    // Contents: path → (mode, owner).
    let listing = stdout(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let contents: BTreeMap<String, (String, String)> = listing
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let path = cols.get(5)?.trim_start_matches('.').to_owned();
            Some((path, (cols[0].to_owned(), cols[1].to_owned())))
        })
        .collect();
    for (path, mode) in [
        ("/usr/local/bin/tollgate", "-rwxr-xr-x"),
        ("/usr/local/bin/tollgate-enforcement", "lrwxrwxrwx"),
        ("/usr/bin/tollgate-agent", "-rwxr-xr-x"),
        ("/usr/bin/tollgate-billing", "-rwxr-xr-x"),
        (
            "/usr/lib/systemd/system/tollgate-agent.service",
            "-rw-r--r--",
        ),
        (
            "/usr/lib/systemd/system/tollgate-billing.service",
            "-rw-r--r--",
        ),
        ("/usr/lib/sysusers.d/tollgate.conf", "-rw-r--r--"),
        ("/etc/tollgate/agent.toml", "-rw-r--r--"),
        ("/etc/tollgate/billing.toml", "-rw-r--r--"),
        ("/usr/share/doc/tollgate/copyright", "-rw-r--r--"),
        ("/usr/share/doc/tollgate/examples/kong.conf", "-rw-r--r--"),
        (
            "/usr/share/doc/tollgate/examples/deck/01-consumers-key-auth.yaml",
            "-rw-r--r--",
        ),
        ("/usr/share/tollgate/wasm/tollgate_wasm.wasm", "-rw-r--r--"),
        (
            "/usr/share/tollgate/wasm/tollgate_wasm.meta.json",
            "-rw-r--r--",
        ),
        (
            "/usr/share/doc/tollgate/examples/wasm/kong.conf",
            "-rw-r--r--",
        ),
        (
            "/usr/share/doc/tollgate/examples/wasm/deck-3.4-3.8.yaml",
            "-rw-r--r--",
        ),
        (
            "/usr/share/doc/tollgate/examples/wasm/deck-3.9-3.10.yaml",
            "-rw-r--r--",
        ),
        (
            "/usr/share/doc/tollgate/examples/wasm/envoy.yaml",
            "-rw-r--r--",
        ),
    ] {
        let Some((m, owner)) = contents.get(path) else {
            panic!("{path} is not in the package:\n{listing}");
        };
        assert_eq!(m, mode, "{path}");
        assert_eq!(owner, "root/root", "{path}");
    }
    assert!(
        listing.contains("./usr/local/bin/tollgate-enforcement -> tollgate"),
        "{listing}"
    );

    // Control files: conffiles, executable maintainer scripts that parse.
    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/tollgate/agent.toml", "/etc/tollgate/billing.toml"]
    );
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o111,
            0o111,
            "{script}"
        );
        run(Command::new("sh").arg("-n").arg(&path));
    }

    // Install into a scratch root: maintainer scripts run on this host with DPKG_ROOT set, so
    // the users land in the scratch root's /etc/passwd. `--force-depends`: a debug build is
    // dynamically linked (Depends: libc6), and the scratch root has no libc6 package.
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // As root (CI, containers) for real; otherwise under fakeroot, which pretends the maintainer
    // scripts' chgrp worked, so ownership is then only checked as root.
    let is_root = stdout(Command::new("id").arg("-u")).trim() == "0";
    let dpkg = |args: &[&str]| {
        let mut cmd = if is_root {
            Command::new("dpkg")
        } else {
            let mut c = Command::new("fakeroot");
            c.arg("dpkg");
            c
        };
        cmd.arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-not-root",
            ])
            .args(args);
        stdout(&mut cmd)
    };
    dpkg(&["-i", deb.to_str().unwrap()]);
    let status = dpkg(&["-s", "tollgate"]);
    assert!(status.contains("Status: install ok installed"), "{status}");

    // Users from sysusers.d, with no login shell; each config readable by its service's group.
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    for svc in ["agent", "billing"] {
        let user = format!("tollgate-{svc}");
        let entry = passwd
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .unwrap_or_else(|| panic!("no {user} in the scratch root's passwd:\n{passwd}"));
        assert!(entry.ends_with("nologin"), "{entry}");
        assert!(entry.contains(&format!(":/var/lib/{user}:")), "{entry}");
        let gid: u32 = group
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{user}:x:")))
            .and_then(|rest| rest.split(':').next())
            .and_then(|g| g.parse().ok())
            .unwrap_or_else(|| panic!("no {user} group:\n{group}"));
        let conf = std::fs::metadata(root.join(format!("etc/tollgate/{svc}.toml"))).unwrap();
        assert_eq!(conf.mode() & 0o777, 0o640, "{svc}.toml");
        if is_root {
            assert_eq!((conf.uid(), conf.gid()), (0, gid), "{svc}.toml");
        }
    }

    // Kong's query command, from where Kong 3.9+ looks, under both plugin names.
    let tollgate = root.join("usr/local/bin/tollgate");
    let info = query_info(&tollgate, &["-dump"]).unwrap();
    assert_eq!(info.name, "tollgate");
    let enforcement =
        query_info(&root.join("usr/local/bin/tollgate-enforcement"), &["-dump"]).unwrap();
    assert_eq!(enforcement.name, "tollgate-enforcement");
    // The shipped configs are valid; the agent's buffer (and where it would be quarantined) is
    // inside its unit's state directory, the only place ProtectSystem=strict lets it write.
    let agent_conf = root.join("etc/tollgate/agent.toml");
    let checked = stdout(
        Command::new(root.join("usr/bin/tollgate-agent"))
            .arg("check-config")
            .arg(&agent_conf),
    );
    assert!(
        checked.contains("path = \"/var/lib/tollgate-agent/buffer\""),
        "{checked}"
    );
    run(Command::new(root.join("usr/bin/tollgate-billing"))
        .arg("check-config")
        .arg(root.join("etc/tollgate/billing.toml")));

    // The filter, byte for byte the built module, and its schema, in the directory the shipped
    // wasm kong.conf names: Kong would load it there as `tollgate_wasm`.
    let kong_conf =
        std::fs::read_to_string(root.join("usr/share/doc/tollgate/examples/wasm/kong.conf"))
            .unwrap();
    let filters_path = kong_conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("wasm_filters_path = "))
        .unwrap_or_else(|| panic!("no wasm_filters_path in\n{kong_conf}"));
    let filters = root.join(filters_path.trim().trim_start_matches('/'));
    assert_eq!(
        std::fs::read(filters.join("tollgate_wasm.wasm")).unwrap(),
        std::fs::read(filter_wasm()).unwrap(),
        "the packaged filter is not the built one"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(filters.join("tollgate_wasm.meta.json")).unwrap())
            .unwrap();
    assert!(meta["config_schema"].is_object(), "{meta}");

    // The units: own user, the installed binary and config, state under /var/lib, hardening.
    let verify_dir = tmp.path().join("verify");
    std::fs::create_dir_all(&verify_dir).unwrap();
    let mut verify_units = Vec::new();
    for svc in ["agent", "billing"] {
        let name = format!("tollgate-{svc}.service");
        let text =
            std::fs::read_to_string(root.join("usr/lib/systemd/system").join(&name)).unwrap();
        let entries = unit_entries(&text);
        let get = |key: &str| -> Vec<&str> {
            entries
                .iter()
                .filter(|(_, k, _)| k == key)
                .map(|(_, _, v)| v.as_str())
                .collect()
        };
        let user = format!("tollgate-{svc}");
        assert_eq!(get("User"), [user.as_str()], "{name}");
        assert_eq!(get("Group"), [user.as_str()], "{name}");
        assert_eq!(get("StateDirectory"), [user.as_str()], "{name}");
        assert_eq!(
            get("ExecStart"),
            [format!("/usr/bin/{user} --config /etc/tollgate/{svc}.toml").as_str()],
            "{name}"
        );
        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("CapabilityBoundingSet", ""),
            ("RestrictSUIDSGID", "yes"),
            ("MemoryDenyWriteExecute", "yes"),
            ("SystemCallFilter", "@system-service"),
            ("WantedBy", "multi-user.target"),
        ] {
            assert!(get(key).contains(&value), "{name}: no {key}={value}");
        }
        // systemd checks the executable exists: point it at the scratch root's copy.
        let copy = verify_dir.join(&name);
        std::fs::write(
            &copy,
            text.replace(
                "ExecStart=/usr/bin/",
                &format!("ExecStart={}/usr/bin/", root.display()),
            ),
        )
        .unwrap();
        verify_units.push(copy);
    }
    let sysusers = std::fs::read_to_string(root.join("usr/lib/sysusers.d/tollgate.conf")).unwrap();
    assert!(
        sysusers.contains("u     tollgate-agent") && sysusers.contains("u     tollgate-billing")
    );

    let verify = run(Command::new("systemd-analyze")
        .arg("verify")
        .args(&verify_units));
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        complaints.trim().is_empty(),
        "systemd-analyze verify complained:\n{complaints}"
    );
    for unit in &verify_units {
        let security = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit));
        let text = String::from_utf8_lossy(&security.stdout).into_owned()
            + &String::from_utf8_lossy(&security.stderr);
        let exposure: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
        assert!(
            exposure <= 2.0,
            "{}: exposure {exposure} (systemd-analyze security):\n{text}",
            unit.display()
        );
    }

    // Purge: binaries, units and configs go; the scratch root's data directories would stay.
    dpkg(&["--purge", "tollgate"]);
    for gone in [
        "usr/local/bin/tollgate",
        "usr/share/tollgate/wasm/tollgate_wasm.wasm",
        "usr/bin/tollgate-agent",
        "usr/lib/systemd/system/tollgate-agent.service",
        "etc/tollgate/agent.toml",
        "etc/tollgate",
    ] {
        assert!(!root.join(gone).exists(), "{gone} left after purge");
    }
}
