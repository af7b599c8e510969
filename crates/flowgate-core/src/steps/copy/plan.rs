//! The copy step's plan: its spec checked against the file.

use globset::GlobSet;

use crate::config::model::{Access, CopySpec, DecryptSpec, Verify};
use crate::plan::ctx::Ctx;
use crate::store::Location;
use crate::units::parse_size;

#[derive(Debug, Clone)]
pub struct CopyPlan {
    pub from: Location,
    pub to: Location,
    pub include: Option<GlobSet>,
    pub exclude: Option<GlobSet>,
    pub manifest: Option<String>,
    pub verify: Verify,
    pub concurrency: usize,
    pub part_size: usize,
    pub decrypt: Option<DecryptSpec>,
}

/// Plan a copy step at `at` (`steps[0]`).
pub(crate) fn build(c: &CopySpec, at: &str, what: &str, cx: &mut Ctx<'_>) -> Option<CopyPlan> {
    let mut ok = true;
    for (k, v) in [("from", &c.from), ("to", &c.to)] {
        ok &= cx.kind_is(&format!("{at}.copy.{k}"), v, false, what);
    }
    let from = cx.location(&format!("{at}.copy.from"), &c.from, Access::Read, what);
    let to = cx.location(&format!("{at}.copy.to"), &c.to, Access::Write, what);
    let include = cx.glob_set(&c.include, &format!("{at}.copy.include"));
    let exclude = cx.glob_set(&c.exclude, &format!("{at}.copy.exclude"));
    let part_size = match c.part_size.as_deref().map(parse_size).transpose() {
        Ok(p) => p.unwrap_or(10 << 20),
        Err(e) => {
            cx.error(&format!("{at}.copy.part_size"), e, None);
            10 << 20
        }
    };
    if let Some(dec) = &c.decrypt {
        decrypt(dec, at, cx);
    }
    if part_size < 5 << 20 {
        cx.error(
            &format!("{at}.copy.part_size"),
            "part_size must be at least 5MiB (the S3 minimum)",
            None,
        );
    }
    ok.then_some(())?;
    Some(CopyPlan {
        from: from?,
        to: to?,
        include,
        exclude,
        manifest: match c.manifest.as_deref() {
            Some("") => None,
            Some(m) => Some(m.to_string()),
            None => Some("_manifest.json".to_string()),
        },
        verify: c.verify.unwrap_or(Verify::Sha256),
        concurrency: c.concurrency.unwrap_or(8).clamp(1, 256),
        part_size: usize::try_from(part_size).unwrap_or(10 << 20),
        decrypt: c.decrypt.clone(),
    })
}

fn decrypt(dec: &DecryptSpec, at: &str, cx: &mut Ctx<'_>) {
    crate::secret::register(&dec.age_identity);
    // Empty: checked when a run decrypts (rows may never ask for it).
    if !dec.age_identity.trim().is_empty()
        && let Err(e) = super::age_identity(&dec.age_identity)
    {
        cx.error(
            &format!("{at}.copy.decrypt.age_identity"),
            e,
            Some(
                "give an age identity (AGE-SECRET-KEY-1…) through a secret: \"${secret:NAME}\""
                    .into(),
            ),
        );
    }
    if let Some(w) = &dec.when
        && let Err(e) = crate::template::check_expression(w)
    {
        cx.error(
            &format!("{at}.copy.decrypt.when"),
            format!("not an expression: {e}"),
            None,
        );
    }
}
