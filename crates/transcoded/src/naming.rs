//! Where outputs go: names from templates, made safe.
//!
//! `[transcode] movie-name` names a disc's single output (its main feature), `title-name` each output
//! of a disc split into titles. Templates are relative paths without the extension, `/` making
//! directories, with these fields:
//!
//! | field | value |
//! |---|---|
//! | `{name}` | the job's output name, cleaned: a raw volume label such as `THE_BIG_MOVIE_DISC_1` becomes `The Big Movie Disc 1` |
//! | `{label}` | the disc's volume label as it is (`disc` when none) |
//! | `{title}` | the title number, two digits |
//! | `{index}` | the title's place among the disc's chosen titles, from 01 |
//! | `{count}` | how many titles were chosen |
//!
//! For Jellyfin, Plex or Kodi: `movie-name = "Movies/{name}/{name}"` and
//! `title-name = "Shows/{name}/{name} - s01e{index}"`. Whatever a label holds (`/`, `..`, control
//! characters, hundreds of characters), every component of the result is one safe file name inside
//! the output directory.

use rafty_core::config::Container;

/// The two templates and the container's extension.
#[derive(Debug, Clone)]
pub struct Naming {
    movie: String,
    title: String,
    extension: &'static str,
}

/// The values a template can use.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    /// The job's output name.
    pub name: &'a str,
    /// The volume label, if known.
    pub label: Option<&'a str>,
    /// The title number.
    pub title: u32,
    /// Place among the chosen titles, from 1.
    pub index: usize,
    /// Number of chosen titles.
    pub count: usize,
}

/// Longest component, in bytes (room is left for the extension, a temporary suffix and `.rafty.json`).
const MAX_COMPONENT: usize = 180;

impl Naming {
    /// Templates from the config; an unknown `{field}` or an empty template is an error naming it.
    pub fn new(movie: &str, title: &str, container: Container) -> Result<Naming, String> {
        let naming = Naming {
            movie: movie.to_owned(),
            title: title.to_owned(),
            extension: container.extension(),
        };
        for (key, template) in [("movie-name", movie), ("title-name", title)] {
            let sample = naming.fill(
                template,
                &Fields {
                    name: "n",
                    label: Some("l"),
                    title: 1,
                    index: 1,
                    count: 1,
                },
            );
            if sample.contains('{') || sample.contains('}') {
                return Err(format!(
                    "[transcode] {key} = {template:?}: unknown field; use {{name}}, {{label}}, {{title}}, {{index}}, {{count}}"
                ));
            }
            if sample.trim_matches('/').is_empty() {
                return Err(format!("[transcode] {key} is empty"));
            }
        }
        Ok(naming)
    }

    fn fill(&self, template: &str, f: &Fields<'_>) -> String {
        template
            .replace("{name}", &safe_component(&clean_name(f.name)))
            .replace("{label}", &safe_component(f.label.unwrap_or("disc")))
            .replace("{title}", &format!("{:02}", f.title))
            .replace("{index}", &format!("{:02}", f.index))
            .replace("{count}", &f.count.to_string())
    }

    /// The output's path relative to the output directory, extension included.
    pub fn render(&self, single: bool, fields: &Fields<'_>) -> String {
        let template = if single { &self.movie } else { &self.title };
        let filled = self.fill(template, fields);
        let components: Vec<String> = filled
            .split('/')
            .filter(|c| !c.trim().is_empty())
            .map(safe_component)
            .collect();
        format!("{}.{}", components.join("/"), self.extension)
    }
}

/// A raw volume label made readable: `THE_BIG_MOVIE_DISC_1` → `The Big Movie Disc 1`. Names with
/// lower-case letters are someone's choice and are kept.
pub fn clean_name(raw: &str) -> String {
    if raw.chars().any(char::is_lowercase) {
        return raw.to_owned();
    }
    raw.replace('_', " ")
        .split_whitespace()
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first
                    .to_uppercase()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<String>>()
        .join(" ")
}

/// One safe path component: no separators, no control characters, no `..`, no leading dot, at most
/// 180 bytes; `disc` when nothing is left.
pub fn safe_component(raw: &str) -> String {
    let replaced: String = raw
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let replaced = replaced.replace("..", "_");
    let trimmed = replaced.trim().trim_start_matches('.').trim();
    let mut end = trimmed.len().min(MAX_COMPONENT);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    let out = trimmed[..end].trim_end();
    if out.is_empty() {
        "disc".to_owned()
    } else {
        out.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(name: &str) -> Fields<'_> {
        Fields {
            name,
            label: Some("SHOW_S1_D2"),
            title: 3,
            index: 2,
            count: 4,
        }
    }

    #[test]
    fn defaults_and_media_server_layouts() {
        let plain = Naming::new("{name}", "{name} - t{title}", Container::Mkv).unwrap();
        assert_eq!(
            plain.render(true, &fields("Feature Disc")),
            "Feature Disc.mkv"
        );
        assert_eq!(plain.render(false, &fields("Show")), "Show - t03.mkv");
        let server = Naming::new(
            "Movies/{name}/{name}",
            "Shows/{name}/{name} - s01e{index}",
            Container::Mp4,
        )
        .unwrap();
        assert_eq!(
            server.render(true, &fields("THE_BIG_MOVIE_DISC_1")),
            "Movies/The Big Movie Disc 1/The Big Movie Disc 1.mp4"
        );
        assert_eq!(
            server.render(false, &fields("Show")),
            "Shows/Show/Show - s01e02.mp4"
        );
        assert!(
            Naming::new("{nme}", "{name}", Container::Mkv)
                .unwrap_err()
                .contains("movie-name")
        );
        assert!(Naming::new("{name}", "", Container::Mkv).is_err());
    }

    #[test]
    fn hostile_labels_stay_inside_the_output_directory() {
        let n = Naming::new("Movies/{name}/{name}", "{label} - {title}", Container::Mkv).unwrap();
        let long = "Ω".repeat(300);
        for raw in [
            "../../etc/passwd",
            "a/b\\c",
            "..",
            ".hidden",
            "\u{7}\u{1b}[31m",
            "🎬 Émoji 🎞",
            long.as_str(),
            "",
        ] {
            let out = n.render(true, &fields(raw));
            for component in out.split('/') {
                assert!(
                    !component.is_empty() && component != "." && component != "..",
                    "{out:?}"
                );
                assert!(!component.starts_with('.'), "{out:?}");
                assert!(!component.chars().any(char::is_control), "{out:?}");
                assert!(
                    component.len() <= 184,
                    "{} bytes in {out:?}",
                    component.len()
                );
                assert!(
                    rafty_core::job::validate_output_name(component.trim_end_matches(".mkv"))
                        .is_ok(),
                    "{out:?}"
                );
            }
            assert_eq!(out.split('/').count(), 3, "{out:?}");
        }
        assert_eq!(clean_name("MY_FAVOURITE_FILM"), "My Favourite Film");
        assert_eq!(clean_name("Already Nice_name"), "Already Nice_name");
    }
}
