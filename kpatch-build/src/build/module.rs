//! Module generation: the livepatch module's C source and Kbuild file, from `templates/`.
//!
//! The generated source holds only the tables the livepatch core reads: one `klp_object` per
//! klp object (vmlinux or a module), one `klp_func` per replaced function, and the object's
//! callbacks. The replacement functions themselves come from the diff, linked beside it; each
//! is reached through the global alias the diff gives it (`kpatch_rs.<object>.<function>`),
//! because the replacement usually keeps the original's local name. Such names are no C
//! identifiers, so the source binds plain C names to them with asm labels.
//!
//! Rendering is pure and deterministic: objects are emitted vmlinux first, then modules by
//! name, and functions in the order given (the caller sorts them).

use std::fmt::Write as _;

/// The C template of the module source.
pub const MODULE_TEMPLATE: &str = include_str!("../../templates/livepatch-module.c");
/// The Kbuild template of the module.
pub const KBUILD_TEMPLATE: &str = include_str!("../../templates/Kbuild");
/// `kpatch-macros.h`, for patches that register callbacks the kpatch-build way.
pub const KPATCH_MACROS_H: &str = include_str!("../../templates/include/kpatch-macros.h");
/// `kpatch-syscall.h`, for patches that change a system call.
pub const KPATCH_SYSCALL_H: &str = include_str!("../../templates/include/kpatch-syscall.h");
/// klp-build's patch-author header, `<linux/livepatch_helpers.h>`, for kernels without it.
pub const LIVEPATCH_HELPERS_H: &str = include_str!("../../templates/include/livepatch_helpers.h");

/// The longest module name the kernel accepts (`MODULE_NAME_LEN` minus the terminating NUL).
const MAX_MODULE_NAME: usize = 55;

/// Which binary a `klp_object` patches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KlpObjectName {
    /// The kernel image; `klp_object.name` is NULL.
    Vmlinux,
    /// A module, by the name the kernel knows it under (`KBUILD_MODNAME`, with underscores).
    Module(String),
}

impl KlpObjectName {
    /// The name used in livepatch symbol and section names: `vmlinux` or the module name.
    pub fn klp_name(&self) -> &str {
        match self {
            KlpObjectName::Vmlinux => "vmlinux",
            KlpObjectName::Module(name) => name,
        }
    }
}

/// One replaced function.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KlpFunction {
    /// The original function's name in the klp object, as kallsyms shows it.
    pub old_name: String,
    /// Which of several same-named symbols in the klp object (0 when the name is unique).
    pub old_sympos: u64,
    /// The global symbol of the replacement in the linked module (the diff's alias).
    pub new_symbol: String,
}

/// The callbacks of one object: global symbols of functions in the linked module.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Callbacks {
    /// `int fn(struct klp_object *)`, may refuse the patch.
    pub pre_patch: Option<String>,
    /// `void fn(struct klp_object *)`.
    pub post_patch: Option<String>,
    /// `void fn(struct klp_object *)`.
    pub pre_unpatch: Option<String>,
    /// `void fn(struct klp_object *)`.
    pub post_unpatch: Option<String>,
}

impl Callbacks {
    /// Takes the callbacks `other` sets; an object's callbacks come from all its source files.
    /// Whether no callback is set.
    pub fn is_empty(&self) -> bool {
        self.pre_patch.is_none()
            && self.post_patch.is_none()
            && self.pre_unpatch.is_none()
            && self.post_unpatch.is_none()
    }

    pub fn merge(&mut self, other: Callbacks) {
        for (slot, value) in [
            (&mut self.pre_patch, other.pre_patch),
            (&mut self.post_patch, other.post_patch),
            (&mut self.pre_unpatch, other.pre_unpatch),
            (&mut self.post_unpatch, other.post_unpatch),
        ] {
            if value.is_some() {
                *slot = value;
            }
        }
    }
}

/// One `klp_object`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KlpObject {
    /// What it patches. The key in the module's `.kpatch.info` stays `target`, as modules
    /// already built carry it, so that the same inputs still give the same bytes.
    #[serde(rename = "target")]
    pub name: KlpObjectName,
    /// The functions it replaces.
    pub functions: Vec<KlpFunction>,
    /// Its callbacks.
    pub callbacks: Callbacks,
}

/// Everything the generated source needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LivepatchModule {
    /// The module's name, such as `livepatch-cmdline`; the kernel shows it with underscores.
    pub name: String,
    /// The patch files it was built from, for the header comment.
    pub patches: Vec<String>,
    /// Whether it replaces all earlier livepatches (`klp_patch.replace`).
    pub replace: bool,
    /// Its objects.
    pub objects: Vec<KlpObject>,
    /// The symbol namespaces its code uses exports of (`MODULE_IMPORT_NS`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub import_namespaces: Vec<String>,
}

/// Why a module could not be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error("invalid livepatch module name `{0}`: use 1 to {MAX_MODULE_NAME} letters, digits, `-` or `_`")]
    InvalidName(String),
    #[error("livepatch module {module} would patch no function")]
    Empty { module: String },
    #[error("livepatch module {module} has two objects for {klp_object}")]
    DuplicateObject { module: String, klp_object: String },
}

impl LivepatchModule {
    /// The name the kernel gives the module (`KBUILD_MODNAME`): dashes become underscores.
    /// It is also the directory under `/sys/kernel/livepatch`.
    pub fn kernel_name(&self) -> String {
        self.name.replace('-', "_")
    }

    fn validate(&self) -> Result<(), ModuleError> {
        let valid_name = !self.name.is_empty()
            && self.name.len() <= MAX_MODULE_NAME
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(ModuleError::InvalidName(self.name.clone()));
        }
        if self
            .objects
            .iter()
            .all(|object| object.functions.is_empty())
        {
            return Err(ModuleError::Empty {
                module: self.name.clone(),
            });
        }
        let mut klp_objects: Vec<&KlpObjectName> =
            self.objects.iter().map(|object| &object.name).collect();
        klp_objects.sort();
        if let Some(pair) = klp_objects.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ModuleError::DuplicateObject {
                module: self.name.clone(),
                klp_object: pair[0].klp_name().to_string(),
            });
        }
        Ok(())
    }
}

/// The C identifier fragment for a klp object: module names may contain `-`.
fn c_identifier(klp_object: &KlpObjectName) -> String {
    klp_object
        .klp_name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A C string literal for `text`, escaping what C requires.
fn c_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            c => {
                let mut buffer = [0u8; 4];
                for byte in c.encode_utf8(&mut buffer).bytes() {
                    let _ = write!(out, "\\{byte:03o}");
                }
            }
        }
    }
    out.push('"');
    out
}

/// An asm label for `symbol`, quoted for the assembler, which would otherwise read the `/` and
/// `.` of `kpatch_rs.fs/proc/cmdline.o.f` as operators.
fn asm_label(symbol: &str) -> String {
    c_string(&format!("\"{symbol}\""))
}

/// One `import_ns` entry per namespace, spelled as `MODULE_INFO` so that kernels before and
/// after 6.13 (where `MODULE_IMPORT_NS` began to take a string) read it alike.
fn imports(module: &LivepatchModule) -> String {
    module
        .import_namespaces
        .iter()
        .map(|namespace| format!("MODULE_INFO(import_ns, {});\n", c_string(namespace)))
        .collect()
}

/// Renders the module's C source.
pub fn render_source(module: &LivepatchModule) -> Result<String, ModuleError> {
    module.validate()?;
    let mut objects: Vec<&KlpObject> = module.objects.iter().collect();
    objects.sort_by(|a, b| a.name.cmp(&b.name));

    // The replacements and callbacks are reached by their symbols in the linked objects,
    // whose names (`kpatch_rs.fs/proc/cmdline.o.cmdline_proc_show`) are no C identifiers:
    // each gets a plain C name bound to the symbol with an asm label.
    let mut declarations = String::new();
    let mut tables = String::new();
    let mut entries = String::new();
    let mut next_function = 0usize;
    let mut next_callback = 0usize;
    for object in objects {
        let ident = c_identifier(&object.name);
        let _ = writeln!(
            tables,
            "\nstatic struct klp_func kpatch_funcs_{ident}[] = {{"
        );
        for function in &object.functions {
            let c_name = format!("kpatch_new_{next_function}");
            next_function += 1;
            let _ = writeln!(
                declarations,
                "extern char {c_name}[] __asm__({});",
                asm_label(&function.new_symbol)
            );
            let _ = writeln!(
                tables,
                "\t{{\n\t\t.old_name = {},\n\t\t.new_func = {c_name},\n\t\t.old_sympos = {},\n\t}},",
                c_string(&function.old_name),
                function.old_sympos
            );
        }
        tables.push_str("\t{ }\n};\n");

        let name = match &object.name {
            KlpObjectName::Vmlinux => "NULL".to_string(),
            KlpObjectName::Module(name) => c_string(name),
        };
        let _ = writeln!(
            entries,
            "\t{{\n\t\t.name = {name},\n\t\t.funcs = kpatch_funcs_{ident},"
        );
        let callbacks = &object.callbacks;
        let callback_fields = [
            ("pre_patch", "int", &callbacks.pre_patch),
            ("post_patch", "void", &callbacks.post_patch),
            ("pre_unpatch", "void", &callbacks.pre_unpatch),
            ("post_unpatch", "void", &callbacks.post_unpatch),
        ];
        if callback_fields
            .iter()
            .any(|(_, _, symbol)| symbol.is_some())
        {
            entries.push_str("\t\t.callbacks = {\n");
            for (field, returns, symbol) in callback_fields {
                let Some(symbol) = symbol else { continue };
                let c_name = format!("kpatch_callback_{next_callback}");
                next_callback += 1;
                let _ = writeln!(
                    declarations,
                    "extern {returns} {c_name}(struct klp_object *obj) __asm__({});",
                    asm_label(symbol)
                );
                let _ = writeln!(entries, "\t\t\t.{field} = {c_name},");
            }
            entries.push_str("\t\t},\n");
        }
        entries.push_str("\t},\n");
    }

    Ok(MODULE_TEMPLATE
        .replace("@MODULE_NAME@", &module.name)
        .replace("@PATCHES@", &module.patches.join(", "))
        .replace("@DECLARATIONS@", declarations.trim_end())
        .replace("@FUNCTION_TABLES@", &tables)
        .replace("@OBJECT_ENTRIES@", &entries)
        .replace("@REPLACE@", if module.replace { "true" } else { "false" })
        + &imports(module))
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn function(old_name: &str, sympos: u64, index: usize) -> KlpFunction {
        KlpFunction {
            old_name: old_name.to_string(),
            old_sympos: sympos,
            new_symbol: format!("kpatch_rs.fs/proc/x.o.f{index}"),
        }
    }

    #[test]
    fn renders_vmlinux_first_then_modules_with_callbacks() {
        let module = LivepatchModule {
            name: "livepatch-demo".to_string(),
            patches: vec!["demo.patch".to_string()],
            replace: true,
            import_namespaces: vec!["CXL".to_string()],
            objects: vec![
                KlpObject {
                    name: KlpObjectName::Module("kpatch_test_mod".to_string()),
                    functions: vec![function("test_mod_show", 0, 1)],
                    callbacks: Callbacks {
                        pre_patch: Some("kpatch_rs.m.o.pre".to_string()),
                        post_unpatch: Some("kpatch_rs.m.o.post".to_string()),
                        ..Callbacks::default()
                    },
                },
                KlpObject {
                    name: KlpObjectName::Vmlinux,
                    functions: vec![function("cmdline_proc_show", 2, 0)],
                    callbacks: Callbacks::default(),
                },
            ],
        };
        let source = render_source(&module).expect("render");
        let start = source.find("extern char").expect("declarations");
        let end = source.find("static struct klp_patch").expect("patch");
        expect![[r#"
            extern char kpatch_new_0[] __asm__("\"kpatch_rs.fs/proc/x.o.f0\"");
            extern char kpatch_new_1[] __asm__("\"kpatch_rs.fs/proc/x.o.f1\"");
            extern int kpatch_callback_0(struct klp_object *obj) __asm__("\"kpatch_rs.m.o.pre\"");
            extern void kpatch_callback_1(struct klp_object *obj) __asm__("\"kpatch_rs.m.o.post\"");

            static struct klp_func kpatch_funcs_vmlinux[] = {
            	{
            		.old_name = "cmdline_proc_show",
            		.new_func = kpatch_new_0,
            		.old_sympos = 2,
            	},
            	{ }
            };

            static struct klp_func kpatch_funcs_kpatch_test_mod[] = {
            	{
            		.old_name = "test_mod_show",
            		.new_func = kpatch_new_1,
            		.old_sympos = 0,
            	},
            	{ }
            };

            static struct klp_object kpatch_objects[] = {
            	{
            		.name = NULL,
            		.funcs = kpatch_funcs_vmlinux,
            	},
            	{
            		.name = "kpatch_test_mod",
            		.funcs = kpatch_funcs_kpatch_test_mod,
            		.callbacks = {
            			.pre_patch = kpatch_callback_0,
            			.post_unpatch = kpatch_callback_1,
            		},
            	},
            	{ }
            };

        "#]]
        .assert_eq(&source[start..end]);
        assert!(source.contains(".replace = true,"));
        assert!(source.contains("MODULE_INFO(livepatch, \"Y\");"));
        assert!(
            source.ends_with("MODULE_INFO(import_ns, \"CXL\");\n"),
            "{source}"
        );
        assert_eq!(module.kernel_name(), "livepatch_demo");
    }

    #[test]
    fn refuses_bad_names_empty_modules_and_duplicate_objects() {
        let object = |name: KlpObjectName| KlpObject {
            name,
            functions: vec![function("f", 0, 0)],
            callbacks: Callbacks::default(),
        };
        let check = |name: &str, objects: Vec<KlpObject>, expected: &str| {
            let module = LivepatchModule {
                name: name.to_string(),
                patches: Vec::new(),
                replace: false,
                objects,
                import_namespaces: Vec::new(),
            };
            let error = render_source(&module).expect_err("must refuse");
            assert_eq!(error.to_string(), expected);
        };
        check(
            "bad name",
            vec![object(KlpObjectName::Vmlinux)],
            "invalid livepatch module name `bad name`: use 1 to 55 letters, digits, `-` or `_`",
        );
        check(
            &"x".repeat(56),
            vec![object(KlpObjectName::Vmlinux)],
            &format!(
                "invalid livepatch module name `{}`: use 1 to 55 letters, digits, `-` or `_`",
                "x".repeat(56)
            ),
        );
        check(
            "empty",
            Vec::new(),
            "livepatch module empty would patch no function",
        );
        check(
            "twice",
            vec![
                object(KlpObjectName::Vmlinux),
                object(KlpObjectName::Vmlinux),
            ],
            "livepatch module twice has two objects for vmlinux",
        );
    }

    #[test]
    fn c_strings_escape_quotes_backslashes_and_non_ascii() {
        assert_eq!(c_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(c_string("é"), "\"\\303\\251\"");
    }
}
