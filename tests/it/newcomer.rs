//! The newcomer's path: the README's command (1) leaves the `openstack` client behind
//! (`scripts/install-deps`, which also survives a package that replaces another), and the
//! README's example commands work as printed.

use std::process::Command;

use crate::clients::venv_bin;
use crate::common::*;

/// scripts/install-deps on a host whose apt behaves as Debian's did here: installing
/// qemu-system-x86 removed the installed qemu-utils. The package tools are small scripts over a
/// directory of "installed" packages (the host's real apt is not the subject, and this test must
/// not install anything); the script under test is the real one.
#[test]
fn install_deps_installs_again_what_an_install_removed() {
    let t = TestHome::new();
    let (bin, installed) = (t.path().join("bin"), t.path().join("installed"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&installed).unwrap();
    let log = t.path().join("apt.log");
    let shims = [
        ("dpkg-query", format!("#!/bin/sh\nfor p; do :; done\n[ -e '{}'/\"$p\" ] && printf 'install ok installed'\nexit 0\n", installed.display())),
        ("apt-cache", "#!/bin/sh\nexit 0\n".to_string()),
        ("systemctl", "#!/bin/sh\nexit 3\n".to_string()),
        ("sudo", "#!/bin/sh\n[ \"$1\" = -u ] && shift 2 && [ \"$1\" = -- ] && shift\nexec \"$@\"\n".to_string()),
        (
            "apt-get",
            format!(
                "#!/bin/sh\necho \"$*\" >> '{log}'\n[ \"$1\" = install ] || exit 0\nfor p; do case $p in -*|install) ;; *) touch '{d}'/\"$p\" ;; esac; done\n\
                 # qemu-system-x86 replaces qemu-utils, once.\n\
                 if [ -e '{d}'/qemu-system-x86 ] && [ ! -e '{d}'/.replaced ]; then rm -f '{d}'/qemu-utils; touch '{d}'/.replaced; fi\n",
                log = log.display(),
                d = installed.display()
            ),
        ),
    ];
    for (name, text) in shims {
        let p = bin.join(name);
        std::fs::write(&p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Everything is there but qemu-system-x86 and qemu-utils.
    let list = std::fs::read_to_string(manifest_dir().join("scripts/install-deps")).unwrap();
    let block = list.split("packages=(").nth(1).unwrap().split("\n)").next().unwrap();
    for line in block.lines() {
        for p in line.split('#').next().unwrap().split_whitespace() {
            if p != "qemu-system-x86" && p != "qemu-utils" {
                std::fs::write(installed.join(p), "").unwrap();
            }
        }
    }
    let out = run(Command::new(manifest_dir().join("scripts/install-deps"))
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env_remove("SUDO_USER"));
    assert_ok(&out);
    let apt = std::fs::read_to_string(&log).unwrap();
    let installs: Vec<&str> = apt.lines().filter(|l| l.starts_with("install")).collect();
    assert_eq!(installs.len(), 2, "{apt}");
    assert!(installs[0].ends_with("qemu-system-x86 qemu-utils"), "{apt}");
    assert!(installs[1].ends_with("-q --no-install-recommends qemu-utils"), "only what went: {apt}");
    assert!(installed.join("qemu-utils").exists() && installed.join("qemu-system-x86").exists());
    assert!(stdout(&out).contains("qemu-utils went missing while installing"), "{}", stdout(&out));
    assert!(stdout(&out).contains(".build/venv/bin/activate"), "the printed source line: {}", stdout(&out));
}

/// The README's block after command (1), line by line as printed, against a home with real
/// guests (qemu under TCG, user networking: this test must not create bridges). Two changes to
/// what a user has: the clouds.yaml is the test home's (`OS_CLIENT_CONFIG_FILE`), and `novabox`
/// is this test's build, put first on the PATH after the README's own PATH line.
#[test]
fn readme_commands_work_as_printed_needs_qemu() {
    crate::guests::require_qemu();
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).unwrap();
    let block = readme
        .split("Then, in another shell")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the README's block after command (1)");
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines[0].starts_with("source .build/venv/bin/activate"), "{block}");
    assert!(lines.iter().any(|l| l.starts_with("openstack --os-cloud novabox server create")), "{block}");

    let home = TestHome::new();
    let out = run(home
        .init_cmd(&["--driver", "qemu", "--bus", "local", "--accel", "tcg", "--network-mode", "user"])
        .env("NOVABOX_DEB_CACHE", crate::guests::deb_cache()));
    assert_ok(&out);
    let _stack = home.up(&[]);
    let test_bin = std::path::Path::new(env!("CARGO_BIN_EXE_novabox")).parent().unwrap().to_path_buf();
    // One shell, as the user's: the first line's environment holds for the others.
    let mut script =
        format!("set -e\n{}\nexport PATH={}:$PATH\ncommand -v openstack >&2\n", lines[0], test_bin.display());
    for line in &lines[1..] {
        script.push_str(&format!("echo '>>> {}'\n{line}\n", line.replace('\'', "")));
        if line.contains("console log show") {
            // The guest boots under TCG: its console fills within seconds of ACTIVE.
            let name = line.split_whitespace().nth(6).unwrap();
            script.push_str(&format!(
                "for i in $(seq 1 120); do openstack --os-cloud novabox console log show {name} | grep -q 'novabox-guest: ready' && break; sleep 1; done\n\
                 openstack --os-cloud novabox console log show {name} | grep 'novabox-guest: ready'\n"
            ));
        }
    }
    let out = run(Command::new("bash")
        .current_dir(manifest_dir())
        .env("OS_CLIENT_CONFIG_FILE", home.clouds_yaml())
        .env("NOVABOX_HOME", home.path())
        .env_remove("OS_CLOUD")
        .env_remove("VIRTUAL_ENV")
        .env("PATH", "/usr/bin:/bin")
        .args(["-c", &script]));
    assert!(out.status.success(), "{}\n{}\nstack log:\n{}", stdout(&out), stderr(&out), home.up_log());
    // The venv's activate names the directory it was made in; .build may be a link to it.
    let found = stderr(&out).lines().find(|l| l.ends_with("/openstack")).map(std::path::PathBuf::from);
    let venv = venv_bin("openstack").canonicalize().unwrap();
    assert_eq!(found.and_then(|f| f.canonicalize().ok()), Some(venv), "openstack from the venv: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("m1.tiny") && text.contains("ACTIVE"), "{text}");
    assert!(text.contains("novabox-guest: ready"), "{text}");
}
