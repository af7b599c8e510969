//! Step kinds, one folder each: its section of the pipeline file (`config.rs`),
//! its planner (`plan.rs`: checks the section into a plan) and its runner
//! (`mod.rs`, `run(ctx, plan)`). [`kinds!`] below is the one registry: it
//! declares the step section of the pipeline file, the planned [`StepKind`], the
//! planner dispatch and the runner dispatch from one list. The engine runs a
//! step through [`run`] and hands it a [`context::StepContext`].

pub mod context;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::model::RetrySpec;
use crate::error::StepError;
use crate::plan::ctx::Ctx;
use context::{StepContext, StepOutput};

/// Declares everything that lists the step kinds, from one list of
/// `field: Variant(Spec => Plan)` lines: the kind's module `steps/<field>/`, the
/// `StepSpec` field, the `StepKind` variant, its name, and the planner and runner
/// dispatch. Each module has `plan::build(&Spec, at, what, cx) -> Option<Plan>` and
/// `run(ctx, &Plan)`.
macro_rules! kinds {
    ($( $(#[$doc:meta])* $kind:ident: $Variant:ident($Spec:ty => $Plan:ty) ),+ $(,)?) => {
        $( pub mod $kind; )+

        /// One step: what every kind shares, and exactly one kind.
        #[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct StepSpec {
            /// Unique id within the pipeline.
            pub id: String,
            /// Steps that must succeed before this one starts.
            #[serde(default)]
            pub needs: Vec<String>,
            /// Retry policy for this step (default: the pipeline's `policy.retry`).
            #[serde(default)]
            pub retry: Option<RetrySpec>,
            /// Time limit of one attempt, e.g. `"30m"` (default: `policy.timeout`).
            #[serde(default)]
            pub timeout: Option<String>,
            /// Run the step only when this expression is true, e.g.
            /// `"route.transfer_type == 'SFT'"`; otherwise it (and what needs it) is skipped.
            #[serde(default)]
            pub when: Option<String>,
            $( $(#[$doc])* #[serde(default)] pub $kind: Option<$Spec>, )+
        }

        /// A step's kind, checked into what its runner needs.
        #[derive(Debug, Clone)]
        pub enum StepKind {
            $( $Variant($Plan), )+
        }

        impl StepKind {
            /// The kind's name, as its key in the pipeline file.
            pub fn name(&self) -> &'static str {
                match self {
                    $( StepKind::$Variant(_) => stringify!($kind), )+
                }
            }
        }

        /// Every kind's key in the pipeline file, in registry order.
        pub const KINDS: &[&str] = &[$( stringify!($kind) ),+];

        impl StepSpec {
            /// The kinds this step sets (exactly one when it is right).
            pub(crate) fn kinds(&self) -> Vec<&'static str> {
                let mut set = Vec::new();
                $( if self.$kind.is_some() { set.push(stringify!($kind)); } )+
                set
            }
        }

        /// The step's kind planned by that kind's own planner; `None` when it
        /// sets no kind or its planner reported errors.
        pub(crate) fn plan(s: &StepSpec, at: &str, what: &str, cx: &mut Ctx<'_>) -> Option<StepKind> {
            $(
                if let Some(spec) = &s.$kind {
                    return $kind::plan::build(spec, at, what, cx).map(StepKind::$Variant);
                }
            )+
            None
        }

        /// One attempt of the step in `ctx`, by its kind.
        pub(crate) fn run<'a>(
            ctx: &'a StepContext<'a>,
        ) -> futures::future::BoxFuture<'a, Result<StepOutput, StepError>> {
            match &ctx.step.kind {
                $( StepKind::$Variant(p) => Box::pin($kind::run(ctx, p)), )+
            }
        }
    };
}

kinds! {
    /// Copy objects between stores.
    copy: Copy(copy::config::CopySpec => copy::plan::CopyPlan),
    /// Extract tables of a SQL store into objects, incrementally.
    extract: Extract(extract::config::ExtractSpec => extract::plan::ExtractPlan),
    /// Load objects (JSON lines or Parquet) into a SQL table.
    load: Load(load::config::LoadSpec => load::plan::LoadPlan),
    /// Run SQL models over landed data.
    transform: Transform(transform::config::TransformSpec => transform::plan::TransformPlan),
    /// Send objects to a recipient over HTTPS.
    deliver: Deliver(deliver::config::DeliverSpec => deliver::plan::DeliverPlan),
    /// Run a program; its exit code says whether it worked, should be retried or
    /// refused its input.
    command: Command(command::config::CommandSpec => command::plan::CommandPlan),
    /// Import one version of a journal into each target (a cluster) at most once.
    import: Import(import::config::ImportSpec => import::plan::ImportPlan),
    /// Publish the dataset this run made: its manifest last, then listed as complete.
    publish: Publish(publish::config::PublishSpec => publish::plan::PublishPlan),
    /// Check a sample of records; results as JSON and JUnit XML.
    test: Test(test::config::TestSpec => test::plan::TestPlan),
}
