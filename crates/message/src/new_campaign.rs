//! The checks every new campaign passes before anything is stored, whoever creates it: the
//! API's `POST /campaigns`, `marketing submit` and the `submit_campaign` task. One function,
//! so a campaign refused by one door is refused by all of them, with the same field paths.

use crate::template::{CompiledCampaign, MessageSettings, TemplateError};
use campaign::{CampaignDocument, Problem, Recipient, UndefinedVariables};

/// Why a new campaign is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NewCampaignError {
    /// Fields that must change, each named by its path (`templates.subject`).
    #[error("{}", list(.0))]
    Invalid(Vec<Problem>),
    /// More recipients than one request (or task) may carry.
    #[error("{count} recipients given, at most {limit} may come with one request")]
    TooManyRecipients { count: usize, limit: u64 },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A template syntax error as a field problem (`templates.html: line 3, column 7: …`).
pub fn template_problem(err: &TemplateError) -> Problem {
    Problem {
        field: format!("templates.{}", err.template),
        message: format!("line {}, column {}: {}", err.line, err.column, err.message),
    }
}

/// Checks a parsed and validated document (see `CampaignDocument::from_json`) with the
/// recipients that come with it: at most `max_recipients` of them, templates that compile,
/// and — for a strict campaign with recipients — every variable a template prints comes from
/// the service or from at least one recipient (a lenient campaign renders missing ones
/// empty; a campaign without recipients yet is checked per recipient at send time).
/// Returns the compiled templates.
pub fn check_new_campaign(
    document: &CampaignDocument,
    recipients: &[Recipient],
    settings: &MessageSettings,
    max_recipients: u64,
) -> Result<CompiledCampaign, NewCampaignError> {
    if recipients.len() as u64 > max_recipients {
        return Err(NewCampaignError::TooManyRecipients {
            count: recipients.len(),
            limit: max_recipients,
        });
    }
    let compiled = CompiledCampaign::compile(document, settings)
        .map_err(|err| NewCampaignError::Invalid(vec![template_problem(&err)]))?;
    let mut problems = Vec::new();
    compile_variants(document, settings, &mut problems);
    if !problems.is_empty() {
        return Err(NewCampaignError::Invalid(problems));
    }
    if !recipients.is_empty() {
        let fields = crate::field_names(recipients);
        let mut problems = unknown_variable_problems(&compiled, document, &fields);
        if let Some(problem) = document.ab_slice_problem(recipients.len() as u64) {
            problems.push(problem);
        }
        if !problems.is_empty() {
            return Err(NewCampaignError::Invalid(problems));
        }
    }
    Ok(compiled)
}

/// Compiles every A/B variant, adding a problem naming the variant's field for each that
/// does not compile.
pub fn compile_variants(
    document: &CampaignDocument,
    settings: &MessageSettings,
    problems: &mut Vec<Problem>,
) -> Vec<CompiledCampaign> {
    (0..document.variants.len())
        .filter_map(
            |index| match CompiledCampaign::compile_variant(document, index, settings) {
                Ok(compiled) => Some(compiled),
                Err(err) => {
                    problems.push(in_variant(document, index, template_problem(&err)));
                    None
                }
            },
        )
        .collect()
}

/// A problem found in variant `index`'s templates, named by the variant's own field when it
/// overrides that template (`variants[1].subject`), else by the campaign's with the variant
/// said (the campaign's template fails with this variant's other parts).
fn in_variant(document: &CampaignDocument, index: usize, problem: Problem) -> Problem {
    let variant = &document.variants[index];
    let part = problem.field.trim_start_matches("templates.").to_string();
    let overridden = match part.as_str() {
        "subject" => variant.subject.is_some(),
        "html" => variant.html.is_some(),
        "text" => variant.text.is_some(),
        _ => false,
    };
    if overridden {
        Problem {
            field: format!("variants[{index}].{part}"),
            message: format!("(variant {:?}) {}", variant.name, problem.message),
        }
    } else {
        problem
    }
}

/// For a strict campaign, one problem per variable a template prints that is not among
/// `fields` (the recipients' field names), named by template and line (an A/B variant's own
/// template by its field, `variants[1].subject`); none for a lenient
/// one. Used by [`check_new_campaign`] and for recipients streamed from a file, whose field
/// names are gathered without holding the rows.
pub fn unknown_variable_problems(
    compiled: &CompiledCampaign,
    document: &CampaignDocument,
    fields: &std::collections::HashSet<String>,
) -> Vec<Problem> {
    if document.templates.undefined_variables != UndefinedVariables::Strict {
        return Vec::new();
    }
    let mut problems = variables_not_in(compiled, fields);
    for index in 0..document.variants.len() {
        // Which variables a template reads does not depend on the render limits; a variant
        // that does not compile is reported by `compile_variants`.
        let Ok(variant) =
            CompiledCampaign::compile_variant(document, index, &MessageSettings::default())
        else {
            continue;
        };
        for problem in variables_not_in(&variant, fields) {
            // A template the variant keeps is the campaign's, already reported.
            let problem = in_variant(document, index, problem);
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
    }
    problems
}

/// One problem per variable `compiled` prints that is not among `fields`.
fn variables_not_in(
    compiled: &CompiledCampaign,
    fields: &std::collections::HashSet<String>,
) -> Vec<Problem> {
    compiled
        .unknown_variables(fields)
        .iter()
        .map(|u| Problem {
            field: format!("templates.{}", u.template),
            message: format!(
                "line {}: `{}` is used but no recipient has that field (add it, use `| default(…)`, or set undefined_variables to lenient)",
                u.line, u.name
            ),
        })
        .collect()
}
