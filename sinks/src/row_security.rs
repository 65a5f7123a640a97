//! Row-level security on `calls` for multi-tenant BI (migration
//! `20240101000004_row_level_security.sql` holds the policies).
//!
//! - [`enforce`]: `ENABLE` and `FORCE ROW LEVEL SECURITY` on `calls` (the sink and `callsync db
//!   migrate` call it when `[sink] row_level_security = true`).
//! - [`grant_reader`]: lets an existing role read the calls of some accounts, and nothing else
//!   (`callsync db grant-reader ROLE --provider P --account A`); [`revoke_reader`] undoes it.
//!
//! A reader granted while row-level security is off would read every row, so granting refuses
//! until it is enforced; a superuser or `BYPASSRLS` role is never subject to it, so granting
//! refuses those too.

use sqlx::{PgPool, Row};

/// Why row-level security could not be set up. No variant carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum RowSecurityError {
    #[error(
        "role {role:?} does not exist; create it first, e.g. `CREATE ROLE \"{role}\" LOGIN PASSWORD '...'`"
    )]
    RoleMissing { role: String },
    #[error("role {role:?} is {why}: row-level security never applies to it, so it would read every account; use an ordinary role")]
    Privileged { role: String, why: &'static str },
    #[error("row-level security is not enforced on `calls`: set `row_level_security = true` in [sink] and run `callsync db migrate` first (a reader granted now would read every account)")]
    NotEnforced,
    #[error("the `calls` table does not exist: run `callsync db migrate` first")]
    NotMigrated,
    #[error("{operation}: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> RowSecurityError {
    move |source| RowSecurityError::Database { operation, source }
}

/// Whether row-level security is enabled and forced on `calls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSecurityState {
    pub enabled: bool,
    pub forced: bool,
}

/// The state of row-level security on `calls` (of the current schema).
pub async fn state(pool: &PgPool) -> Result<RowSecurityState, RowSecurityError> {
    let row = sqlx::query(
        "SELECT c.relrowsecurity, c.relforcerowsecurity FROM pg_class c \
         WHERE c.oid = to_regclass('calls')",
    )
    .fetch_optional(pool)
    .await
    .map_err(db("reading the row-level security of calls"))?
    .ok_or(RowSecurityError::NotMigrated)?;
    Ok(RowSecurityState {
        enabled: row.get(0),
        forced: row.get(1),
    })
}

/// Enables and forces row-level security on `calls`: readers see their granted accounts, the
/// owner (through its own policy) everything.
pub async fn enforce(pool: &PgPool) -> Result<(), RowSecurityError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(db("beginning the row-level security change"))?;
    for sql in [
        "ALTER TABLE calls ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE calls FORCE ROW LEVEL SECURITY",
    ] {
        sqlx::query(sql)
            .execute(&mut *tx)
            .await
            .map_err(db("enforcing row-level security on calls"))?;
    }
    tx.commit()
        .await
        .map_err(db("committing the row-level security change"))
}

/// One provider account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub provider: String,
    pub account_id: String,
}

/// Lets the existing role `role` read the calls of `accounts` (in addition to any granted
/// before), and nothing else: `SELECT` on `calls`, the lookup function, the grant rows.
/// Returns the accounts the role can read now.
pub async fn grant_reader(
    pool: &PgPool,
    role: &str,
    accounts: &[Account],
) -> Result<Vec<Account>, RowSecurityError> {
    let rls = state(pool).await?;
    if !(rls.enabled && rls.forced) {
        return Err(RowSecurityError::NotEnforced);
    }
    let quoted = ordinary_role(pool, role).await?;
    let mut tx = pool
        .begin()
        .await
        .map_err(db("beginning the reader grant"))?;
    let schema: String = sqlx::query_scalar("SELECT quote_ident(current_schema())")
        .fetch_one(&mut *tx)
        .await
        .map_err(db("reading the current schema"))?;
    for sql in [
        format!("GRANT USAGE ON SCHEMA {schema} TO {quoted}"),
        format!("GRANT SELECT ON {schema}.calls TO {quoted}"),
        format!("GRANT EXECUTE ON FUNCTION {schema}.callsync_reader_accounts() TO {quoted}"),
    ] {
        sqlx::query(&sql)
            .execute(&mut *tx)
            .await
            .map_err(db("granting the reader its privileges"))?;
    }
    for account in accounts {
        sqlx::query(
            "INSERT INTO callsync_account_grants (role_name, provider, account_id) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(role)
        .bind(&account.provider)
        .bind(&account.account_id)
        .execute(&mut *tx)
        .await
        .map_err(db("recording the granted account"))?;
    }
    tx.commit()
        .await
        .map_err(db("committing the reader grant"))?;
    granted_accounts(pool, role).await
}

/// Takes `accounts` back from `role` (all of them, and its privileges on `calls`, when
/// `accounts` is empty). Returns the accounts it can still read.
pub async fn revoke_reader(
    pool: &PgPool,
    role: &str,
    accounts: &[Account],
) -> Result<Vec<Account>, RowSecurityError> {
    let quoted = quoted_role(pool, role).await?;
    let mut tx = pool
        .begin()
        .await
        .map_err(db("beginning the reader revoke"))?;
    if accounts.is_empty() {
        sqlx::query("DELETE FROM callsync_account_grants WHERE role_name = $1")
            .bind(role)
            .execute(&mut *tx)
            .await
            .map_err(db("removing the granted accounts"))?;
        for sql in [
            format!("REVOKE SELECT ON calls FROM {quoted}"),
            format!("REVOKE EXECUTE ON FUNCTION callsync_reader_accounts() FROM {quoted}"),
        ] {
            sqlx::query(&sql)
                .execute(&mut *tx)
                .await
                .map_err(db("revoking the reader's privileges"))?;
        }
    } else {
        for account in accounts {
            sqlx::query(
                "DELETE FROM callsync_account_grants \
                 WHERE role_name = $1 AND provider = $2 AND account_id = $3",
            )
            .bind(role)
            .bind(&account.provider)
            .bind(&account.account_id)
            .execute(&mut *tx)
            .await
            .map_err(db("removing a granted account"))?;
        }
    }
    tx.commit()
        .await
        .map_err(db("committing the reader revoke"))?;
    granted_accounts(pool, role).await
}

/// The accounts granted to `role`.
pub async fn granted_accounts(pool: &PgPool, role: &str) -> Result<Vec<Account>, RowSecurityError> {
    let rows = sqlx::query(
        "SELECT provider, account_id FROM callsync_account_grants WHERE role_name = $1 \
         ORDER BY provider, account_id",
    )
    .bind(role)
    .fetch_all(pool)
    .await
    .map_err(db("reading the granted accounts"))?;
    Ok(rows
        .into_iter()
        .map(|r| Account {
            provider: r.get(0),
            account_id: r.get(1),
        })
        .collect())
}

/// `role` quoted as an identifier, once it is known to exist.
async fn quoted_role(pool: &PgPool, role: &str) -> Result<String, RowSecurityError> {
    let row = sqlx::query("SELECT quote_ident(rolname) FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_optional(pool)
        .await
        .map_err(db("looking the role up"))?
        .ok_or_else(|| RowSecurityError::RoleMissing {
            role: role.to_string(),
        })?;
    Ok(row.get(0))
}

/// Like [`quoted_role`], refusing roles row-level security does not apply to.
async fn ordinary_role(pool: &PgPool, role: &str) -> Result<String, RowSecurityError> {
    let row = sqlx::query(
        "SELECT quote_ident(rolname), rolsuper, rolbypassrls, \
                COALESCE(pg_has_role(rolname, (SELECT relowner FROM pg_class WHERE oid = to_regclass('calls')), 'USAGE'), false) \
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_optional(pool)
    .await
    .map_err(db("looking the role up"))?
    .ok_or_else(|| RowSecurityError::RoleMissing {
        role: role.to_string(),
    })?;
    let (quoted, superuser, bypass, owner): (String, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let why = if superuser {
        Some("a superuser")
    } else if bypass {
        Some("BYPASSRLS")
    } else if owner {
        Some("the owner of calls (or a member of its role)")
    } else {
        None
    };
    match why {
        Some(why) => Err(RowSecurityError::Privileged {
            role: role.to_string(),
            why,
        }),
        None => Ok(quoted),
    }
}
