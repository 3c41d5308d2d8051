//! The batch manifest: the kernels (each with the inputs of `kpatch-rs build`) and the patch
//! sets to build for them, in TOML or JSON. Relative paths are relative to the manifest
//! file. A manifest that cannot serve is an error naming the line (a syntax or type error) or
//! the field (a name used twice, a patch set naming a kernel the manifest lacks).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One kernel as the manifest gives it: `kpatch-rs build`'s kernel inputs.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// The name of the kernel in the output's paths and the summary.
    pub name: String,
    /// `--sourcedir`.
    pub sourcedir: PathBuf,
    /// `--config` (default: `.config` beside the symbols).
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// `--vmlinux`; exactly one of `vmlinux` and `system_map`.
    #[serde(default)]
    pub vmlinux: Option<PathBuf>,
    /// `--system-map`.
    #[serde(default)]
    pub system_map: Option<PathBuf>,
    /// `--symvers` (default: beside the symbols).
    #[serde(default)]
    pub symvers: Option<PathBuf>,
    /// `--modules`.
    #[serde(default)]
    pub modules: Option<PathBuf>,
    /// `--kernel-release`.
    #[serde(default)]
    pub kernel_release: Option<String>,
    /// `--make-var`, each `VAR=VALUE` (a compiler wrapper: `CC=ccache gcc`).
    #[serde(default)]
    pub make_vars: Vec<String>,
    /// `--skip-compiler-check`.
    #[serde(default)]
    pub skip_compiler_check: bool,
    /// `--sign-key` (with `sign_cert`).
    #[serde(default)]
    pub sign_key: Option<String>,
    /// `--sign-cert`.
    #[serde(default)]
    pub sign_cert: Option<PathBuf>,
    /// `--chroot`: the root file system of the kernel's release its builds run in.
    #[serde(default)]
    pub chroot: Option<PathBuf>,
}

/// One patch set: the patches of one livepatch module.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchSet {
    /// The name in the output's paths and the summary; the module's name unless `module`.
    pub name: String,
    /// The patches, applied in order.
    pub patches: Vec<PathBuf>,
    /// The kernels to build it for, by name (default: every kernel).
    #[serde(default)]
    pub kernels: Option<Vec<String>>,
    /// `-n`: the module is `livepatch-MODULE.ko` (default: the patch set's name).
    #[serde(default)]
    pub module: Option<String>,
    /// `--no-replace`.
    #[serde(default)]
    pub no_replace: bool,
    /// `--allow-layout-change`, each a type.
    #[serde(default)]
    pub allow_layout_change: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    #[serde(rename = "kernel")]
    kernels: Vec<Kernel>,
    #[serde(rename = "patchset")]
    patchsets: Vec<PatchSet>,
}

/// A checked manifest, with every path made relative to the manifest's directory.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it was read from.
    pub path: PathBuf,
    pub kernels: Vec<Kernel>,
    pub patchsets: Vec<PatchSet>,
}

/// A manifest that cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read the manifest {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{}: {field}: {message}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl Manifest {
    /// Reads a manifest: JSON when the file's name ends in `.json`, else TOML.
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(path, &text)
    }

    /// Parses `text`, read from `path` (which decides the format and what relative paths are
    /// relative to).
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let syntax = |message: String| ManifestError::Syntax {
            path: path.to_path_buf(),
            message,
        };
        let file: ManifestFile = if path.extension().is_some_and(|e| e == "json") {
            // serde_json's message ends with "at line L column C".
            serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| syntax(toml_message(text, &e)))?
        };
        let manifest = Manifest {
            path: path.to_path_buf(),
            kernels: file.kernels,
            patchsets: file.patchsets,
        };
        manifest.check()?;
        Ok(manifest.relative_to(path.parent().unwrap_or(Path::new("."))))
    }

    fn field_error(&self, field: String, message: impl Into<String>) -> ManifestError {
        ManifestError::Field {
            path: self.path.clone(),
            field,
            message: message.into(),
        }
    }

    /// What deserialising cannot check: names, references between the tables, and the
    /// arguments `kpatch-rs build` would refuse.
    fn check(&self) -> Result<(), ManifestError> {
        if self.kernels.is_empty() {
            return Err(self.field_error("kernel".into(), "the manifest names no kernel"));
        }
        if self.patchsets.is_empty() {
            return Err(self.field_error("patchset".into(), "the manifest names no patch set"));
        }
        let mut kernel_names = BTreeSet::new();
        for (i, kernel) in self.kernels.iter().enumerate() {
            let field = |name: &str| format!("kernel[{i}].{name}");
            check_name(&kernel.name).map_err(|m| self.field_error(field("name"), m))?;
            if !kernel_names.insert(kernel.name.as_str()) {
                return Err(self.field_error(
                    field("name"),
                    format!("kernel {:?} is named twice", kernel.name),
                ));
            }
            match (&kernel.vmlinux, &kernel.system_map) {
                (Some(_), Some(_)) => {
                    return Err(
                        self.field_error(field("vmlinux"), "give vmlinux or system_map, not both")
                    )
                }
                (None, None) => {
                    return Err(self.field_error(
                        field("vmlinux"),
                        "give the kernel's symbols: vmlinux or system_map",
                    ))
                }
                _ => {}
            }
            if kernel.sign_key.is_some() != kernel.sign_cert.is_some() {
                return Err(
                    self.field_error(field("sign_key"), "sign_key and sign_cert go together")
                );
            }
            for (j, var) in kernel.make_vars.iter().enumerate() {
                check_make_var(var)
                    .map_err(|m| self.field_error(field(&format!("make_vars[{j}]")), m))?;
            }
        }
        let mut patchset_names = BTreeSet::new();
        for (i, patchset) in self.patchsets.iter().enumerate() {
            let field = |name: &str| format!("patchset[{i}].{name}");
            check_name(&patchset.name).map_err(|m| self.field_error(field("name"), m))?;
            if !patchset_names.insert(patchset.name.as_str()) {
                return Err(self.field_error(
                    field("name"),
                    format!("patch set {:?} is named twice", patchset.name),
                ));
            }
            if patchset.patches.is_empty() {
                return Err(self.field_error(field("patches"), "no patch given"));
            }
            if let Some(module) = &patchset.module {
                check_name(module).map_err(|m| self.field_error(field("module"), m))?;
            }
            for (j, kernel) in patchset.kernels.iter().flatten().enumerate() {
                if !kernel_names.contains(kernel.as_str()) {
                    return Err(self.field_error(
                        field(&format!("kernels[{j}]")),
                        format!("no kernel is named {kernel:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The manifest with its relative paths joined to `base`.
    fn relative_to(mut self, base: &Path) -> Manifest {
        let join = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        for kernel in &mut self.kernels {
            join(&mut kernel.sourcedir);
            for path in [
                &mut kernel.config,
                &mut kernel.vmlinux,
                &mut kernel.system_map,
                &mut kernel.symvers,
                &mut kernel.modules,
                &mut kernel.sign_cert,
                &mut kernel.chroot,
            ]
            .into_iter()
            .flatten()
            {
                join(path);
            }
            if let Some(key) = &mut kernel.sign_key {
                if !key.starts_with("pkcs11:") && Path::new(key).is_relative() {
                    *key = base.join(&*key).display().to_string();
                }
            }
        }
        for patchset in &mut self.patchsets {
            patchset.patches.iter_mut().for_each(join);
        }
        self
    }

    /// Whether the patch set builds for the kernel.
    pub fn applies(&self, patchset: &PatchSet, kernel: &Kernel) -> bool {
        patchset
            .kernels
            .as_ref()
            .is_none_or(|names| names.contains(&kernel.name))
    }
}

/// A name that makes one path component and one log name: letters, digits, `.`, `_` and `-`,
/// starting with a letter or digit, without `--` (which separates kernel and patch set in a
/// log's name).
fn check_name(name: &str) -> Result<(), String> {
    let valid = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a name: use letters, digits, '.', '_' and '-', starting with a \
             letter or digit, without \"--\""
        ))
    }
}

/// A make variable as `--make-var` takes it.
fn check_make_var(text: &str) -> Result<(), String> {
    let Some((name, _)) = text.split_once('=') else {
        return Err(format!("{text:?} is not VAR=VALUE"));
    };
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a make variable name"))
    }
}

/// toml's error as one line with the line and column, without its drawing of the source.
fn toml_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line} column {column}: {message}")
        }
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[kernel]]
name = "stock"
sourcedir = "src"
vmlinux = "build/vmlinux"
make_vars = ["CC=ccache gcc"]

[[kernel]]
name = "debian"
sourcedir = "/abs/src"
system_map = "System.map"
config = "config"

[[patchset]]
name = "cmdline"
patches = ["patches/cmdline.patch"]

[[patchset]]
name = "meminfo"
patches = ["a.patch", "/abs/b.patch"]
kernels = ["debian"]
no_replace = true
"#;

    fn error_of(name: &str, text: &str) -> String {
        Manifest::parse(Path::new(name), text)
            .expect_err("a bad manifest")
            .to_string()
    }

    #[test]
    fn relative_paths_are_the_manifests_and_kernels_default_to_all() {
        let manifest = Manifest::parse(Path::new("/m/batch.toml"), GOOD).expect("parses");
        let stock = &manifest.kernels[0];
        assert_eq!(stock.sourcedir, Path::new("/m/src"));
        assert_eq!(
            stock.vmlinux.as_deref(),
            Some(Path::new("/m/build/vmlinux"))
        );
        assert_eq!(stock.make_vars, ["CC=ccache gcc"]);
        let debian = &manifest.kernels[1];
        assert_eq!(debian.sourcedir, Path::new("/abs/src"));
        assert_eq!(debian.config.as_deref(), Some(Path::new("/m/config")));
        assert_eq!(manifest.patchsets[1].patches[0], Path::new("/m/a.patch"));
        assert_eq!(manifest.patchsets[1].patches[1], Path::new("/abs/b.patch"));
        assert!(manifest.applies(&manifest.patchsets[0], stock));
        assert!(!manifest.applies(&manifest.patchsets[1], stock));
        assert!(manifest.applies(&manifest.patchsets[1], debian));
    }

    #[test]
    fn json_manifests_read_the_same() {
        let json = r#"{"kernel": [{"name": "k", "sourcedir": "s", "vmlinux": "v"}],
                       "patchset": [{"name": "p", "patches": ["x.patch"]}]}"#;
        let manifest = Manifest::parse(Path::new("dir/m.json"), json).expect("parses");
        assert_eq!(manifest.kernels[0].sourcedir, Path::new("dir/s"));
        assert_eq!(manifest.patchsets[0].patches[0], Path::new("dir/x.patch"));
        let text = error_of("m.json", r#"{"kernel": [{"name": 1}]}"#);
        assert!(
            text.contains("m.json: invalid type") && text.contains("line 1"),
            "{text}"
        );
    }

    #[test]
    fn bad_manifests_name_the_line_or_the_field() {
        let misspelt = GOOD.replace("no_replace", "noreplace");
        let text = error_of("m.toml", &misspelt);
        assert!(
            text.starts_with("m.toml: line 22 column 1: unknown field `noreplace`"),
            "{text}"
        );
        let text = error_of("m.toml", &GOOD.replace("[\"debian\"]", "[\"debain\"]"));
        assert_eq!(
            text,
            "m.toml: patchset[1].kernels[0]: no kernel is named \"debain\""
        );
        let text = error_of(
            "m.toml",
            &GOOD.replace("\"debian\"\nsourcedir", "\"stock\"\nsourcedir"),
        );
        assert_eq!(
            text,
            "m.toml: kernel[1].name: kernel \"stock\" is named twice"
        );
        let text = error_of("m.toml", &GOOD.replace("\"cmdline\"", "\"a--b\""));
        assert!(
            text.starts_with("m.toml: patchset[0].name: \"a--b\" is not a name"),
            "{text}"
        );
        let text = error_of(
            "m.toml",
            &GOOD.replace("name = \"meminfo\"", "name = \"../x\""),
        );
        assert!(
            text.starts_with("m.toml: patchset[1].name: \"../x\" is not a name"),
            "{text}"
        );
        let text = error_of(
            "m.toml",
            &GOOD.replace(
                "system_map = \"System.map\"",
                "vmlinux = \"v\"\nsystem_map = \"m\"",
            ),
        );
        assert_eq!(
            text,
            "m.toml: kernel[1].vmlinux: give vmlinux or system_map, not both"
        );
        let text = error_of("m.toml", &GOOD.replace("CC=ccache gcc", "C C=gcc"));
        assert_eq!(
            text,
            "m.toml: kernel[0].make_vars[0]: \"C C\" is not a make variable name"
        );
        let text = error_of("m.toml", "[[kernel]]\nname = \"k\"\n");
        assert!(text.contains("missing field"), "{text}");
        let text = error_of(
            "m.toml",
            "[[kernel]]\nname = \"k\"\nsourcedir = \"s\"\nvmlinux = \"v\"\n[[patchset]]\nname = \"p\"\npatches = []\n",
        );
        assert_eq!(text, "m.toml: patchset[0].patches: no patch given");
    }
}
