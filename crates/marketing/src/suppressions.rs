//! `marketing suppressions list|add|remove`: the suppression list in the local store
//! (DATABASE_URL), the same list `/api/v1/suppressions` manages.

use crate::config::StoreArgs;
use crate::report::open as open_store;
use campaign::EmailAddress;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum SuppressionsCommand {
    /// List suppressed addresses, ordered by address.
    List {
        /// How many to show at most (1 to 1000000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Put an address on the list: every later send skips it (idempotent; the first reason
    /// is kept).
    Add {
        /// The address (compared case-insensitively).
        email: String,
        /// Why, e.g. manual, unsubscribed, hard_bounce, complaint.
        #[arg(long, default_value = "manual")]
        reason: String,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Take an address off the list (exit 1 when it was not on it).
    Remove {
        /// The address (compared case-insensitively).
        email: String,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn address(email: &str) -> anyhow::Result<EmailAddress> {
    EmailAddress::parse(email).map_err(|err| {
        anyhow::anyhow!(
            "{email:?} is not an email address ({err}); give one like someone@example.com"
        )
    })
}

pub async fn run(command: SuppressionsCommand) -> anyhow::Result<ExitCode> {
    match command {
        SuppressionsCommand::List { limit, json, store } => {
            let store = open_store(&store).await?;
            let mut items = Vec::new();
            let mut after: Option<String> = None;
            while items.len() < limit as usize {
                let want = (limit as usize - items.len()).min(1000) as u32;
                let page = store.list_suppressions(after.as_deref(), want).await?;
                let full = page.len() == want as usize;
                after = page.last().map(|s| s.key());
                items.extend(page);
                if !full {
                    break;
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                println!("{:<40} {:<16} since", "email", "reason");
                for item in items {
                    println!("{:<40} {:<16} {}", item.email, item.reason, item.created_at);
                }
            }
        }
        SuppressionsCommand::Add {
            email,
            reason,
            json,
            store,
        } => {
            let email = address(&email)?;
            if reason.is_empty() || reason.len() > 100 || reason.chars().any(char::is_control) {
                anyhow::bail!("--reason must be 1 to 100 characters on one line");
            }
            open_store(&store).await?.suppress(&email, &reason).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"email": email.as_str(), "suppressed": true})
                );
            } else {
                println!("suppressed {email}");
            }
        }
        SuppressionsCommand::Remove { email, json, store } => {
            let email = address(&email)?;
            if !open_store(&store).await?.remove_suppression(&email).await? {
                anyhow::bail!(
                    "{email} is not on the suppression list (see `marketing suppressions list`)"
                );
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({"email": email.as_str(), "suppressed": false})
                );
            } else {
                println!("removed {email} from the suppression list");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
