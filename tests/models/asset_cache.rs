//! The asset cache without the network: a wheel made here, fetched through a stand-in for
//! `python -m pip` that copies it (and counts its downloads), checked at use by its sha256,
//! fetched by two callers at once, and resumed from a download an interrupted fetch left.

use std::io::Write;
use std::path::{Path, PathBuf};

use gralora_models::assets::{self, Asset, Fetched, sha256_file};

use super::tmp_dir;

/// A wheel holding `data/a.txt` and `data/b.bin`.
fn wheel(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default();
    zip.start_file("data/a.txt", opts).unwrap();
    zip.write_all(b"the first file\n").unwrap();
    zip.start_file("data/b.bin", opts).unwrap();
    zip.write_all(&(0..=255u8).cycle().take(70_000).collect::<Vec<_>>())
        .unwrap();
    zip.start_file("other/skipped.txt", opts).unwrap();
    zip.write_all(b"not extracted").unwrap();
    zip.finish().unwrap();
}

struct Fixture {
    _scratch: crate::common::Scratch,
    home: PathBuf,
    /// The stand-in for `python3`.
    python: String,
    /// One line per download the stand-in made.
    count: PathBuf,
    archive: PathBuf,
    asset: Asset,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let scratch = tmp_dir(name);
        let archive = scratch.join("fake_asset-0.1-py3-none-any.whl");
        wheel(&archive);
        let count = scratch.join("downloads.txt");
        let python = scratch.join("python");
        // `python -m pip --version`, or `python -m pip download ... -d DIR ...` (a slow copy).
        std::fs::write(
            &python,
            format!(
                "#!/bin/sh\nif [ \"$3\" = --version ]; then echo 'pip 23.2.1 from stand-in'; exit 0; fi\n\
                 echo download >> '{}'\nsleep 0.4\n\
                 while [ $# -gt 0 ]; do if [ \"$1\" = -d ]; then d=\"$2\"; fi; shift; done\n\
                 cp '{}' \"$d/\"\n",
                count.display(),
                archive.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sha: &'static str = Box::leak(sha256_file(&archive).unwrap().into_boxed_str());
        let home = scratch.join("home");
        Self {
            home,
            python: python.display().to_string(),
            count,
            archive,
            asset: Asset {
                name: "fake",
                about: "a wheel made by the test",
                package: "fake-asset==0.1",
                archive_sha256: sha,
                sdist: false,
                extract: &[("data/", "")],
                pinned: &[],
            },
            _scratch: scratch,
        }
    }

    fn fetch(&self) -> Fetched {
        assets::fetch_with(&self.home, &self.asset, &self.python, false, &mut |_| {}).unwrap()
    }

    fn downloads(&self) -> usize {
        std::fs::read_to_string(&self.count)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

#[test]
fn a_damaged_cached_asset_is_found_by_its_sha256_at_use_and_fetched_again() {
    let f = Fixture::new("asset-damaged");
    assert!(matches!(f.fetch(), Fetched::Downloaded(_)));
    let dir = assets::dir(&f.home, &f.asset);
    assert_eq!(
        std::fs::read(dir.join("a.txt")).unwrap(),
        b"the first file\n"
    );
    assert!(!dir.join("skipped.txt").exists());
    assets::verify(&f.home, &f.asset).unwrap();
    // The download is gone once the asset is in place.
    assert!(!f.home.join(".downloads/fake").exists());

    // One byte changed, the size kept: only the hash can tell.
    let b = dir.join("b.bin");
    let mut bytes = std::fs::read(&b).unwrap();
    bytes[12_345] ^= 0x20;
    std::fs::write(&b, &bytes).unwrap();
    assert!(assets::is_present(&f.home, &f.asset), "sizes still match");
    let err = assets::verify(&f.home, &f.asset).unwrap_err().to_string();
    assert!(
        err.contains("b.bin") && err.contains("damaged") && err.contains("gralora fetch fake"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");

    // `fetch` sees the damage too and replaces the copy.
    assert!(matches!(f.fetch(), Fetched::Downloaded(_)));
    assert_eq!(f.downloads(), 2);
    assets::verify(&f.home, &f.asset).unwrap();
    assert!(matches!(f.fetch(), Fetched::Present(_)));
    assert_eq!(f.downloads(), 2);
}

#[test]
fn two_fetches_of_one_asset_at_once_download_it_once() {
    let f = Fixture::new("asset-concurrent");
    let results: Vec<Fetched> = std::thread::scope(|s| {
        let a = s.spawn(|| f.fetch());
        let b = s.spawn(|| f.fetch());
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let downloaded = results
        .iter()
        .filter(|r| matches!(r, Fetched::Downloaded(_)))
        .count();
    assert_eq!(downloaded, 1, "{results:?}");
    assert_eq!(f.downloads(), 1);
    assets::verify(&f.home, &f.asset).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&f.home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_fetch_interrupted_after_its_download_resumes_from_the_archive() {
    let f = Fixture::new("asset-resume");
    // What an interrupted fetch leaves: the complete archive in .downloads, no asset.
    let kept = f.home.join(".downloads/fake");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::copy(&f.archive, kept.join("fake_asset-0.1-py3-none-any.whl")).unwrap();
    assert!(matches!(f.fetch(), Fetched::Downloaded(_)));
    assert_eq!(f.downloads(), 0, "the kept archive was used");
    assets::verify(&f.home, &f.asset).unwrap();

    // A truncated archive (a download cut short) is not trusted: it is removed and fetched.
    let g = Fixture::new("asset-resume-cut");
    let kept = g.home.join(".downloads/fake");
    std::fs::create_dir_all(&kept).unwrap();
    let whole = std::fs::read(&g.archive).unwrap();
    std::fs::write(
        kept.join("fake_asset-0.1-py3-none-any.whl"),
        &whole[..whole.len() / 2],
    )
    .unwrap();
    assert!(matches!(g.fetch(), Fetched::Downloaded(_)));
    assert_eq!(g.downloads(), 1);
    assets::verify(&g.home, &g.asset).unwrap();
}
