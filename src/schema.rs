//! JSON Schemas of the messages (job, result, dead letter, shadow comparison), generated from the Rust types and
//! committed under `schemas/` (a test fails when they drift).

use crate::domain::dead_letter::DeadLetter;
use crate::domain::job::JobMessage;
use crate::domain::result::LivenessResult;
use crate::domain::shadow::ShadowComparison;

/// (file name, pretty JSON) for each message schema.
pub fn all() -> Vec<(&'static str, String)> {
    let render =
        |s: schemars::Schema| serde_json::to_string_pretty(&s).expect("schema serializes") + "\n";
    vec![
        (
            "job.v1.schema.json",
            render(schemars::schema_for!(JobMessage)),
        ),
        (
            "result.v1.schema.json",
            render(schemars::schema_for!(LivenessResult)),
        ),
        (
            "dead_letter.v1.schema.json",
            render(schemars::schema_for!(DeadLetter)),
        ),
        (
            "shadow.v1.schema.json",
            render(schemars::schema_for!(ShadowComparison)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_schemas_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        for (name, fresh) in super::all() {
            let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            assert!(
                committed == fresh,
                "schemas/{name} is out of date with the Rust types: run `cargo run -- schemas --write schemas` and commit"
            );
        }
    }
}
