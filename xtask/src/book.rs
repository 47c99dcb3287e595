//! `cargo xtask book`: the book in `docs/` built with mdBook, and every relative link of it and of
//! README.md checked; `cargo xtask docs`: its generated command reference rewritten.
//!
//! - **mdBook** is installed once into the cache (`cargo install --locked`, beside bpf-linker
//!   and cargo-fuzz), keyed by its version, without its `serve`/`watch`/`search` features: the
//!   build needs none of them.
//! - **Output**: the target directory's `book/`, like every other build product.
//! - **Links**: each relative link (or image) of `docs/src/**/*.md` and `README.md` must name a
//!   file that exists and, with a `#fragment`, a heading of that file, slugged as GitHub and
//!   mdBook slug headings. Links with a scheme (`https:`, `mailto:`) are not fetched: CI has no
//!   internet. Markdown is parsed with pulldown-cmark, so links in code blocks and spans are no
//!   links, as the renderers see it. Every broken link is listed, `FILE:LINE -> TARGET`.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use crate::{bootstrap::cached_tool, cargo, check, target_dir, workspace_root};

/// The mdBook release this project builds with; known to build with rustc 1.95 (it declares
/// rust-version 1.88).
const MDBOOK_VERSION: &str = "0.5.4";

/// The generated command reference, relative to the workspace.
const COMMANDS_PAGE: &str = "docs/src/reference/commands.md";

pub fn run() -> anyhow::Result<()> {
    let mdbook = cached_tool(
        "mdbook",
        MDBOOK_VERSION,
        // Without `serve`, `watch` and `search`: the build needs none of them.
        &["--no-default-features"],
        "about three minutes on two cores",
    )?
    .join("mdbook");
    let root = workspace_root();
    let out = target_dir()?.join("book");
    let started = Instant::now();
    check(
        Command::new(&mdbook)
            .arg("build")
            .arg(root.join("docs"))
            .arg("--dest-dir")
            .arg(&out),
    )?;
    eprintln!(
        "xtask book: built into {} in {:.1?}",
        out.display(),
        started.elapsed()
    );

    let started = Instant::now();
    let mut files = markdown_files(&root.join("docs/src"))?;
    files.push(root.join("README.md"));
    let broken = broken_links(&files)?;
    if !broken.is_empty() {
        for link in &broken {
            let file = link.file.strip_prefix(&root).unwrap_or(&link.file);
            eprintln!(
                "{}:{} -> {} ({})",
                file.display(),
                link.line,
                link.target,
                link.why
            );
        }
        bail!("{} broken link(s) in the book or README.md", broken.len());
    }
    eprintln!(
        "xtask book: the links of {} files checked in {:.1?}",
        files.len(),
        started.elapsed()
    );
    Ok(())
}

/// `cargo xtask docs`: rewrites the command reference from the CLI's clap definition
/// (`shaper-docs --markdown`), which `shaper/tests/docs.rs` holds it equal to.
pub fn generate() -> anyhow::Result<()> {
    crate::bootstrap::run()?;
    check(cargo().args(["build", "--package", "shaper", "--bin", "shaper-docs"]))?;
    let binary = target_dir()?.join("debug").join("shaper-docs");
    let output = Command::new(&binary)
        .arg("--markdown")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{} --markdown failed: {}\n{}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let path = workspace_root().join(COMMANDS_PAGE);
    fs::write(&path, &output.stdout).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask docs: wrote {COMMANDS_PAGE}");
    Ok(())
}

/// Every `.md` file under `dir`, sorted.
fn markdown_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A link that leads nowhere.
#[derive(Debug)]
struct Broken {
    file: PathBuf,
    line: usize,
    target: String,
    why: &'static str,
}

/// What one Markdown file holds for the check: its links (line, target) and its headings' slugs.
#[derive(Debug, Default, PartialEq)]
struct Page {
    links: Vec<(usize, String)>,
    slugs: Vec<String>,
}

fn broken_links(files: &[PathBuf]) -> anyhow::Result<Vec<Broken>> {
    let mut pages: HashMap<PathBuf, Page> = HashMap::new();
    let mut broken = Vec::new();
    for file in files {
        let links = read_page(&mut pages, file)?.links.clone();
        for (line, target) in links {
            if has_scheme(&target) {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((path, fragment)) => (path, Some(fragment)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap_or(Path::new(".")).join(path)
            };
            let why = if !dest.exists() {
                Some("no such file")
            } else if let Some(fragment) = fragment
                && dest.extension().is_some_and(|e| e == "md")
                && !read_page(&mut pages, &dest.canonicalize()?)?
                    .slugs
                    .iter()
                    .any(|s| s == fragment)
            {
                Some("no such heading")
            } else {
                None
            };
            if let Some(why) = why {
                broken.push(Broken {
                    file: file.clone(),
                    line,
                    target,
                    why,
                });
            }
        }
    }
    Ok(broken)
}

/// The parsed page at `path`, read on first use.
fn read_page<'a>(pages: &'a mut HashMap<PathBuf, Page>, path: &Path) -> anyhow::Result<&'a Page> {
    if !pages.contains_key(path) {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        pages.insert(path.to_path_buf(), parse(&text));
    }
    Ok(&pages[path])
}

/// `https://…`, `mailto:…`: a URL with a scheme, not a file of the tree.
fn has_scheme(target: &str) -> bool {
    target.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !scheme.contains('/')
    })
}

/// The links and heading slugs of a Markdown text, as a CommonMark renderer with GitHub's
/// tables sees them.
fn parse(text: &str) -> Page {
    let mut page = Page::default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut heading: Option<String> = None;
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    for (event, range) in Parser::new_ext(text, options).into_offset_iter() {
        match event {
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                let line = text[..range.start].matches('\n').count() + 1;
                page.links.push((line, dest_url.to_string()));
            }
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap_or_default());
                // A repeated heading gets -1, -2, ... as on GitHub and in mdBook.
                let n = seen.entry(base.clone()).or_insert(0);
                page.slugs.push(if *n == 0 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                });
                *n += 1;
            }
            _ => {}
        }
    }
    page
}

/// A heading's anchor as GitHub and mdBook make it: lower case, letters, digits, `-` and `_`
/// kept, spaces turned into `-`, everything else dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// Replaces what stands between `<!-- NAME:start -->` and `<!-- NAME:end -->` in the book's
/// page `page` (relative to the workspace) with `content`: the generated parts of a page
/// written by hand (`vm --update-docs`, `bench --update-docs`).
pub fn replace_generated(page: &str, name: &str, content: &str) -> anyhow::Result<()> {
    let (start_marker, end_marker) = (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->"),
    );
    let path = workspace_root().join(page);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {page}"))?;
    let (Some(start), Some(end)) = (text.find(&start_marker), text.find(&end_marker)) else {
        bail!("{page} has no {start_marker} … {end_marker} markers");
    };
    let updated = format!(
        "{}{start_marker}\n{content}{}",
        &text[..start],
        &text[end..]
    );
    fs::write(&path, updated).with_context(|| format!("writing {page}"))?;
    eprintln!("xtask: {name} written into {page}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_githubs() {
        assert_eq!(slug("The burst"), "the-burst");
        assert_eq!(
            slug("Health probes: `/healthz` and `/readyz`"),
            "health-probes-healthz-and-readyz"
        );
        assert_eq!(
            slug("`shaper limit ls --json` (schema version 1)"),
            "shaper-limit-ls---json-schema-version-1"
        );
        assert_eq!(
            slug("The program's own log lines (aya-log)"),
            "the-programs-own-log-lines-aya-log"
        );
        assert_eq!(slug("snake_case and Ünïcode"), "snake_case-and-ünïcode");
        assert_eq!(
            slug("Restarts, crashes and upgrades"),
            "restarts-crashes-and-upgrades"
        );
    }

    #[test]
    fn links_are_found_with_their_lines_and_code_is_not_a_link() {
        let text = "# Title\n\nSee [the burst](guide/limits.md#the-burst) and\n\
                    `[not](a-link.md)`.\n\n```\n[nor](this.md)\n```\n\n\
                    | a | b |\n| --- | --- |\n| [in a table](t.md) | ![image](i.png) |\n\n\
                    [ref]: https://example.com\n\nA [reference][ref].\n";
        let page = parse(text);
        assert_eq!(
            page.links,
            vec![
                (3, "guide/limits.md#the-burst".to_owned()),
                (12, "t.md".to_owned()),
                (12, "i.png".to_owned()),
                (16, "https://example.com".to_owned()),
            ]
        );
        assert_eq!(page.slugs, vec!["title"]);
    }

    #[test]
    fn repeated_headings_are_numbered() {
        let page = parse("# Options\n\n## Options\n\n## Options\n");
        assert_eq!(page.slugs, vec!["options", "options-1", "options-2"]);
    }

    #[test]
    fn schemes_are_not_files() {
        assert!(has_scheme("https://aya-rs.dev"));
        assert!(has_scheme("mailto:someone@example.com"));
        assert!(!has_scheme("guide/limits.md#the-burst"));
        assert!(!has_scheme("#the-burst"));
        assert!(!has_scheme("../shaper.toml"));
    }

    #[test]
    fn broken_links_name_file_line_and_target() {
        let dir = std::env::temp_dir().join(format!("xtask-book-test-{}", std::process::id()));
        fs::create_dir_all(dir.join("guide")).unwrap();
        fs::write(dir.join("guide/limits.md"), "# Limits\n\n## The burst\n").unwrap();
        let index = dir.join("index.md");
        fs::write(
            &index,
            "# Index\n\n[ok](guide/limits.md#the-burst) [self](#index)\n\
             [gone](guide/gone.md)\n[no heading](guide/limits.md#the-bucket)\n\
             [web](https://example.com/#x)\n",
        )
        .unwrap();
        let broken = broken_links(&[index]).unwrap();
        let found: Vec<(usize, &str, &str)> = broken
            .iter()
            .map(|b| (b.line, b.target.as_str(), b.why))
            .collect();
        assert_eq!(
            found,
            vec![
                (4, "guide/gone.md", "no such file"),
                (5, "guide/limits.md#the-bucket", "no such heading"),
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
