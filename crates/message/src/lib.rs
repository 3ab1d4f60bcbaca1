//! From one campaign and one recipient to the exact bytes that go over SMTP: personalization
//! with minijinja, a hand-written MIME writer and DKIM signing. Pure: no network or file I/O,
//! so the API, the CLI and the delivery worker share it and tests need nothing running.
//!
//! The path per campaign and recipient:
//! 1. [`CompiledCampaign::compile`] once per campaign (syntax errors name template, line,
//!    column); [`check_new_campaign`] does it with the other checks of a new campaign.
//! 2. [`CompiledCampaign::render`] per recipient ([`RenderError`] is that recipient's failure).
//! 3. [`CompiledCampaign::build`] writes MIME; [`DkimSigner::sign`] adds DKIM-Signature.
//!
//! [`CompiledCampaign::message`] does 2 and 3; [`preview`] does all of it for one recipient.

mod compiled;
mod dkim;
mod mime;
mod new_campaign;
mod outgoing;
mod scan;
mod template;
mod tracking;
mod values;

pub use dkim::{
    DkimError, DkimKeyKind, DkimSigner, check_name as check_dkim_name,
    generate_key as generate_dkim_key,
};
pub use mime::{BuildError, BuildOptions, recipient_of_message_id};
pub use new_campaign::{
    NewCampaignError, check_new_campaign, compile_variants, template_problem,
    unknown_variable_problems,
};
pub use outgoing::{Envelope, EnvelopeError, OutgoingMessage};
pub use template::{
    CompiledCampaign, Limit, MessageSettings, RecipientContext, RenderError, RenderedMessage,
    SERVICE_VARIABLES, TemplateError, TemplatePart, TrackingUrls, UnknownVariable, panic_message,
};
pub use tracking::tracked_links;

use campaign::{CampaignDocument, Recipient};
use serde::Serialize;
use std::collections::HashSet;

/// Anything that stops one recipient's message. Recorded on the recipient; never fatal to a
/// batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The templates do not compile (only from [`preview`], which compiles).
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Rendering this recipient failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The MIME writer refused the rendered message.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// DKIM signing failed.
    #[error(transparent)]
    Dkim(#[from] DkimError),
}

impl CompiledCampaign {
    /// Render, build and (when a signer is given) sign: what the delivery worker calls per
    /// recipient. RSA signing costs about a millisecond: call this from a blocking pool.
    pub fn message(
        &self,
        recipient: &Recipient,
        ctx: &RecipientContext,
        options: &BuildOptions,
        dkim: Option<&DkimSigner>,
    ) -> Result<OutgoingMessage, MessageError> {
        // The plans note where they wrote literal lines: the build copies their
        // quoted-printable encoding, made once per campaign.
        let mut literals = crate::mime::BodyLiterals::default();
        let rendered = self.render_noting_literals(recipient, ctx, Some(&mut literals))?;
        let mut message = crate::mime::build(self, &rendered, options, &literals)?;
        if let Some(signer) = dkim {
            signer.sign(&mut message, options.date.unix_timestamp())?;
        }
        Ok(message)
    }
}

/// A message as it would be sent, for `POST /campaigns/{id}/preview` and `marketing preview`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preview {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    /// The complete message (.eml), signed when a signer was given.
    #[serde(skip)]
    pub eml: Vec<u8>,
}

/// Compiles the campaign and produces one recipient's message: the rendered parts and the
/// exact bytes.
pub fn preview(
    doc: &CampaignDocument,
    settings: &MessageSettings,
    recipient: &Recipient,
    ctx: &RecipientContext,
    options: &BuildOptions,
    dkim: Option<&DkimSigner>,
) -> Result<Preview, MessageError> {
    let compiled = CompiledCampaign::compile(doc, settings)?;
    let rendered = compiled.render(recipient, ctx)?;
    let mut message = compiled.build(&rendered, options)?;
    if let Some(signer) = dkim {
        signer.sign(&mut message, options.date.unix_timestamp())?;
    }
    Ok(Preview {
        subject: rendered.subject,
        html: rendered.html,
        text: rendered.text,
        eml: message.content.to_vec(),
    })
}

/// Every personalization field name any of these recipients has: the input to
/// [`CompiledCampaign::unknown_variables`].
pub fn field_names<'a>(recipients: impl IntoIterator<Item = &'a Recipient>) -> HashSet<String> {
    let mut names = HashSet::new();
    for recipient in recipients {
        for key in recipient.fields.keys() {
            if !names.contains(key) {
                names.insert(key.clone());
            }
        }
    }
    names
}
