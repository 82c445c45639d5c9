//! The console's HTML templates (minijinja, escaped for HTML: every value a
//! job or a vendor wrote is text on the page, never markup).

use minijinja::Environment;
use serde::Serialize;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("groups.html", include_str!("templates/groups.html")),
    ("messages.html", include_str!("templates/messages.html")),
    ("preview.html", include_str!("templates/preview.html")),
    ("done.html", include_str!("templates/done.html")),
    ("job.html", include_str!("templates/job.html")),
];

pub struct Views {
    env: Environment<'static>,
}

/// What every page gets besides its own data.
#[derive(Serialize)]
pub struct Chrome<'a> {
    pub title: &'a str,
    /// The navigation entry to mark.
    pub nav: &'a str,
    pub csrf: String,
    pub read_only: bool,
    /// Seconds between reloads, for the pages that reload themselves.
    pub refresh: Option<u64>,
}

impl Views {
    pub fn new() -> anyhow::Result<Views> {
        // Lenient (the default): a field a record leaves out is empty and
        // false, so an optional field never breaks a page.
        let mut env = Environment::new();
        for (name, text) in TEMPLATES {
            env.add_template(name, text)
                .map_err(|e| anyhow::anyhow!("console template {name}: {e}"))?;
        }
        Ok(Views { env })
    }

    pub fn render(
        &self,
        name: &str,
        chrome: &Chrome<'_>,
        data: &impl Serialize,
    ) -> anyhow::Result<String> {
        let t = self.env.get_template(name)?;
        use minijinja::value::Serde;
        Ok(t.render(minijinja::context! {
            chrome => Serde(chrome),
            d => Serde(data),
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses_and_values_are_escaped() {
        let v = Views::new().unwrap();
        let chrome = Chrome {
            title: "<t>",
            nav: "jobs",
            csrf: "tok".into(),
            read_only: false,
            refresh: None,
        };
        let data = serde_json::json!({"job_id": "<script>x</script>", "searched": true,
            "state": {"summary": "s", "detail": "d"}, "records": null, "dead": [], "poison": [],
            "claim": null, "error": null, "scan_note": null, "metadata_shown": false, "store": null});
        let html = v.render("job.html", &chrome, &data).unwrap();
        assert!(!html.contains("<script>x"), "{html}");
        assert!(html.contains("&lt;script&gt;x"), "{html}");
    }
}
