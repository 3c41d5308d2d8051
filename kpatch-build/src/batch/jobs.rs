//! The jobs of a manifest (one per kernel and patch set that applies to it), in one order
//! whatever the manifest's order, and the shards that split them between machines.

use super::manifest::Manifest;

/// One job: a patch set built for a kernel, by index into the manifest's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub kernel: usize,
    pub patchset: usize,
}

impl Job {
    /// `KERNEL/PATCHSET`, the job's name and its output directory under the batch's.
    pub fn name(&self, manifest: &Manifest) -> String {
        format!(
            "{}/{}",
            manifest.kernels[self.kernel].name, manifest.patchsets[self.patchset].name
        )
    }
}

/// Every job of the manifest, sorted by kernel name, then patch set name: the order the
/// manifest lists them in changes nothing.
pub fn all_jobs(manifest: &Manifest) -> Vec<Job> {
    let mut jobs: Vec<Job> = (0..manifest.kernels.len())
        .flat_map(|kernel| {
            (0..manifest.patchsets.len()).map(move |patchset| Job { kernel, patchset })
        })
        .filter(|job| {
            manifest.applies(
                &manifest.patchsets[job.patchset],
                &manifest.kernels[job.kernel],
            )
        })
        .collect();
    jobs.sort_by(|a, b| {
        let key = |job: &Job| {
            (
                manifest.kernels[job.kernel].name.clone(),
                manifest.patchsets[job.patchset].name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    jobs
}

/// Part `index` of `count` (1-based, as CI engines number their parallel jobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Shard, String> {
        let bad = || format!("`{text}` is not I/N with 1 <= I <= N (shards count from 1)");
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let index: usize = index.trim().parse().map_err(|_| bad())?;
        let count: usize = count.trim().parse().map_err(|_| bad())?;
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// This shard's jobs of `jobs` (in [`all_jobs`]' order): a contiguous run, the runs of
    /// shards 1 to N in turn covering every job exactly once, their lengths differing by one
    /// at most. Contiguous, so that a kernel's jobs mostly fall to one machine, which then
    /// prepares that kernel's build directories once for all of them.
    pub fn select<T: Clone>(&self, jobs: &[T]) -> Vec<T> {
        let start = (self.index - 1) * jobs.len() / self.count;
        let end = self.index * jobs.len() / self.count;
        jobs[start..end].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifest(kernels: &[&str], patchsets: &[&str]) -> Manifest {
        let mut text = String::new();
        for kernel in kernels {
            text +=
                &format!("[[kernel]]\nname = \"{kernel}\"\nsourcedir = \"s\"\nvmlinux = \"v\"\n");
        }
        for patchset in patchsets {
            text += &format!("[[patchset]]\nname = \"{patchset}\"\npatches = [\"p\"]\n");
        }
        Manifest::parse(Path::new("m.toml"), &text).expect("manifest")
    }

    fn names(manifest: &Manifest, jobs: &[Job]) -> Vec<String> {
        jobs.iter().map(|job| job.name(manifest)).collect()
    }

    #[test]
    fn shards_cover_every_job_once_in_an_order_the_manifest_does_not_change() {
        let one = manifest(&["b", "a", "c"], &["y", "x", "w", "z"]);
        let other = manifest(&["c", "a", "b"], &["x", "z", "y", "w"]);
        let jobs = all_jobs(&one);
        assert_eq!(names(&one, &jobs), names(&other, &all_jobs(&other)));
        assert_eq!(names(&one, &jobs)[..3], ["a/w", "a/x", "a/y"]);
        for count in 1..=14 {
            let mut union = Vec::new();
            let mut sizes = Vec::new();
            for index in 1..=count {
                let part = Shard { index, count }.select(&jobs);
                sizes.push(part.len());
                union.extend(part);
            }
            assert_eq!(union, jobs, "{count} shards");
            let (min, max) = (sizes.iter().min(), sizes.iter().max());
            assert!(
                max.zip(min).is_some_and(|(max, min)| max - min <= 1),
                "{sizes:?}"
            );
        }
        // Two shards of twelve jobs: each kernel's four jobs on one machine but one.
        let first = Shard { index: 1, count: 2 }.select(&jobs);
        assert_eq!(
            names(&one, &first),
            ["a/w", "a/x", "a/y", "a/z", "b/w", "b/x"]
        );
    }

    #[test]
    fn a_shard_is_written_i_of_n_counting_from_one() {
        assert_eq!("2/3".parse(), Ok(Shard { index: 2, count: 3 }));
        assert_eq!(Shard { index: 2, count: 3 }.to_string(), "2/3");
        for bad in ["0/3", "4/3", "1/0", "1", "a/b", "1/2/3", ""] {
            let error = bad.parse::<Shard>().expect_err(bad);
            assert!(error.contains("shards count from 1"), "{error}");
        }
    }

    #[test]
    fn a_patch_set_builds_only_for_its_kernels() {
        let text = "[[kernel]]\nname = \"a\"\nsourcedir = \"s\"\nvmlinux = \"v\"\n\
                    [[kernel]]\nname = \"b\"\nsourcedir = \"s\"\nvmlinux = \"v\"\n\
                    [[patchset]]\nname = \"p\"\npatches = [\"p\"]\nkernels = [\"b\"]\n\
                    [[patchset]]\nname = \"q\"\npatches = [\"q\"]\n";
        let manifest = Manifest::parse(Path::new("m.toml"), text).expect("manifest");
        assert_eq!(
            names(&manifest, &all_jobs(&manifest)),
            ["a/q", "b/p", "b/q"]
        );
    }
}
