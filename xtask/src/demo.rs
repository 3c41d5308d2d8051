//! `cargo xtask demo`: the main job from a fresh machine, end to end.
//!
//! Installs what is missing, builds (or finds) the cached test kernel, builds kpatch-rs, turns
//! `fixtures/patches/cmdline.patch` into a livepatch module with `kpatch-rs build`, shows what the
//! module asks of the kernel with `kpatch-rs inspect`, and loads it into the test kernel under
//! QEMU: `/proc/cmdline` before, while patched, and after the patch is disabled and removed.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::guest::{run_jobs, Ending, Job, Rootfs};
use crate::kernel::{ensure_kernel, KernelSpec};

/// What the guest runs: the same checks a user would make by hand.
const GUEST_SCRIPT: &str = r#"set -eu
sysfs=/sys/kernel/livepatch/livepatch_cmdline
wait_for() { n=300; until "$@"; do n=$((n - 1)); [ "$n" -gt 0 ] || exit 1; sleep 0.1; done; }
transition_done() { [ "$(cat "$sysfs/transition")" = 0 ]; }
patch_gone() { [ ! -e "$sysfs" ]; }
echo "before:   $(cat /proc/cmdline)"
insmod ./livepatch-cmdline.ko
wait_for transition_done
echo "patched:  $(cat /proc/cmdline)"
echo 0 > "$sysfs/enabled"
wait_for patch_gone
echo "disabled: $(cat /proc/cmdline)"
rmmod livepatch_cmdline
if dmesg | grep -E 'WARNING:|Oops|BUG:|Call Trace'; then exit 1; fi
echo "dmesg:    no warning, oops or bug"
"#;

pub fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("`cargo xtask demo` takes no arguments, got `{arg}`");
    }
    let sh = Shell::new()?;
    let root = crate::project_root();
    sh.change_dir(&root);
    crate::deps::ensure_packages(&sh)?;
    let kernel = ensure_kernel(&sh, &KernelSpec::stock())?;
    let kpatch = crate::kpatch::build_kpatch_rs(&sh)?;

    let work = root.join("target/demo");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let source = &kernel.source;
    let vmlinux = kernel.build.join("vmlinux");
    let patch = root.join("fixtures/patches/cmdline.patch");
    cmd!(
        sh,
        "{kpatch} build --sourcedir {source} --vmlinux {vmlinux} -o {work} {patch}"
    )
    .run()
    .context("kpatch-rs build failed")?;
    let module = work.join("livepatch-cmdline.ko");
    cmd!(sh, "{kpatch} inspect {module}").run()?;

    println!("loading the module into the test kernel under QEMU");
    let rootfs = Rootfs::new(&sh, &work.join("rootfs"))?;
    rootfs.copy_file(&module, std::path::Path::new("/demo/livepatch-cmdline.ko"))?;
    std::fs::write(
        rootfs.path(std::path::Path::new("/demo/demo.sh")),
        GUEST_SCRIPT,
    )?;
    let jobs = [Job {
        name: "demo".to_string(),
        cwd: "/demo".to_string(),
        command: "sh ./demo.sh".to_string(),
        timeout: Duration::from_secs(120),
    }];
    let outcomes = run_jobs(&sh, &kernel, &rootfs, &jobs, &work.join("qemu"))?;
    let Some(outcome) = outcomes.first() else {
        bail!("the guest reported nothing");
    };
    print!("{}", outcome.output);
    match &outcome.ending {
        Ending::Exited(0) => {
            println!("demo: the livepatch loaded, changed /proc/cmdline, and came off cleanly");
            Ok(())
        }
        other => bail!(
            "demo: the guest check failed ({other:?}); console log: {}",
            outcome
                .console_log
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".to_string())
        ),
    }
}
