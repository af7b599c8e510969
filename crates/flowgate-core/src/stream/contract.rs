//! A stream's declared contract: a JSON Schema (one object of its `$defs`, or
//! the whole), compiled once; each event is checked against it before it goes
//! to the table's columns.

use std::path::Path;

use serde_json::{Value, json};

/// A compiled contract.
pub struct Contract {
    /// What dead letters call it: the object's name, or the file's.
    pub name: String,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Contract {
    /// Read and compile `file`'s schema, or its object `object`.
    pub fn load(file: &Path, object: Option<&str>) -> Result<Contract, String> {
        let at = file.display();
        let text = std::fs::read(file).map_err(|e| format!("the contract {at}: {e}"))?;
        let doc: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("the contract {at} is not JSON: {e}"))?;
        let (name, schema) = match object.filter(|o| !o.is_empty()) {
            None => (
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                doc,
            ),
            Some(o) => (
                o.to_string(),
                pick(&doc, o).map_err(|e| format!("the contract {at}: {e}"))?,
            ),
        };
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| format!("the contract {at} is not a valid JSON Schema: {e}"))?;
        Ok(Contract { name, validator })
    }

    /// `Ok`, or the first way `event` breaks the contract (where, and what).
    pub fn check(&self, event: &Value) -> Result<(), String> {
        self.validator.validate(event).map_err(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_string() } else { at };
            format!("the contract {} at {at}: {e}", self.name)
        })
    }
}

/// The schema of `object`: a reference to it beside the document's own
/// definitions (so its references inside still resolve), or the document when
/// its `title` is `object`.
fn pick(doc: &Value, object: &str) -> Result<Value, String> {
    for defs in ["$defs", "definitions"] {
        if doc[defs].get(object).is_some() {
            let mut schema = json!({ "$ref": format!("#/{defs}/{object}") });
            for keep in ["$schema", "$defs", "definitions"] {
                if let Some(v) = doc.get(keep) {
                    schema[keep] = v.clone();
                }
            }
            return Ok(schema);
        }
    }
    if doc["title"] == object {
        return Ok(doc.clone());
    }
    let known: Vec<&str> = ["$defs", "definitions"]
        .iter()
        .filter_map(|d| doc[*d].as_object())
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    Err(format!(
        "no object `{object}` (its $defs: {})",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_of_the_defs_checks_events_and_says_where_they_break_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("delivery.json");
        std::fs::write(
            &f,
            r##"{"$defs": {
                "Money": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?$"},
                "DeliveryEvent": {"type": "object", "required": ["id", "type"],
                  "properties": {"id": {"type": "integer"}, "amount": {"$ref": "#/$defs/Money"},
                                 "occurred_at": {"type": "string", "format": "date-time"}}}}}"##,
        )
        .unwrap();
        let c = Contract::load(&f, Some("DeliveryEvent")).unwrap();
        assert!(
            c.check(&json!({"id": 1, "type": "Made", "amount": "2.50"}))
                .is_ok()
        );
        let e = c.check(&json!({"id": "x1", "type": "Made"})).unwrap_err();
        assert!(e.starts_with("the contract DeliveryEvent at /id: "), "{e}");
        let e = c
            .check(&json!({"id": 1, "type": "Made", "amount": "lots"}))
            .unwrap_err();
        assert!(e.contains("/amount"), "{e}");
        let e = c
            .check(&json!({"id": 1, "type": "M", "occurred_at": "yesterday"}))
            .unwrap_err();
        assert!(e.contains("/occurred_at") && e.contains("date-time"), "{e}");
        let e = c.check(&json!({"type": "Made"})).unwrap_err();
        assert!(e.contains("at /:") && e.contains("\"id\""), "{e}");
        let e = Contract::load(&f, Some("OrderEvent")).unwrap_err();
        assert!(
            e.contains("no object `OrderEvent` (its $defs: Money, DeliveryEvent)")
                || e.contains("DeliveryEvent, Money"),
            "{e}"
        );
        let e = Contract::load(&dir.path().join("none.json"), None).unwrap_err();
        assert!(e.contains("none.json"), "{e}");
    }
}
