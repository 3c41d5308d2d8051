//! Packages of another Debian suite than this machine's (Debian 13, trixie, from Debian 12),
//! through a private apt state under the cache: its own sources list and package lists, so the
//! machine's apt configuration is never touched. Packages are downloaded, never installed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

/// The apt state of one suite of Debian's archive, signed by a key of this machine's
/// `debian-archive-keyring`.
pub struct SuiteApt {
    suite: &'static str,
    dir: PathBuf,
}

impl SuiteApt {
    /// The state in `~/.cache/kpatch-rs/<cache>/apt`, with the package lists read once.
    pub fn new(sh: &Shell, cache: &Path, suite: &'static str) -> Result<SuiteApt> {
        let apt = SuiteApt {
            suite,
            dir: cache.join("apt"),
        };
        for dir in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(apt.dir.join(dir))
                .with_context(|| format!("cannot create {}", apt.dir.join(dir).display()))?;
        }
        let sources = apt.dir.join("sources.list");
        std::fs::write(
            &sources,
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://deb.debian.org/debian {suite} main\n"
            ),
        )
        .with_context(|| format!("cannot write {}", sources.display()))?;
        if !apt.dir.join(".updated").exists() {
            apt.update(sh)?;
        }
        Ok(apt)
    }

    fn update(&self, sh: &Shell) -> Result<()> {
        let options = self.options();
        cmd!(sh, "apt-get -q {options...} update")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("cannot read {}'s package list with apt-get", self.suite))?;
        std::fs::write(self.dir.join(".updated"), "")?;
        Ok(())
    }

    fn options(&self) -> Vec<String> {
        [
            format!(
                "Dir::Etc::SourceList={}",
                self.dir.join("sources.list").display()
            ),
            "Dir::Etc::SourceParts=/nonexistent".to_string(),
            format!("Dir::State::Lists={}", self.dir.join("lists").display()),
            format!("Dir::Cache={}", self.dir.join("cache").display()),
            "APT::Sandbox::User=root".to_string(),
        ]
        .iter()
        .flat_map(|option| ["-o".to_string(), option.clone()])
        .collect()
    }

    /// What `apt-cache ARGS` prints with this suite's package lists.
    pub fn cache_query(&self, sh: &Shell, args: &[&str]) -> Result<String> {
        let options = self.options();
        cmd!(sh, "apt-cache {options...} {args...}")
            .quiet()
            .read()
            .with_context(|| format!("apt-cache {} failed for {}", args.join(" "), self.suite))
    }

    /// `apt-get download WANTED` (a package, or `package=version`) into `dir`; with the
    /// package lists read again when the kept ones name a file the archive no longer has.
    pub fn download(&self, sh: &Shell, wanted: &str, dir: &Path) -> Result<()> {
        let options = self.options();
        let _dir = sh.push_dir(dir);
        let get = || {
            let options = &options;
            cmd!(sh, "apt-get -q {options...} download {wanted}")
                .quiet()
                .ignore_stdout()
                .run()
        };
        if get().is_ok() {
            return Ok(());
        }
        self.update(sh)?;
        get().with_context(|| format!("cannot download {wanted} from {}", self.suite))
    }
}
