//! The store and the authenticator against real databases: every test runs once on a
//! fresh SQLite file and once on a fresh schema of the local PostgreSQL.

mod common;
mod crud;
mod invalid;
mod login;
