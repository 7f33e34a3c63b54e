//! A `text` argument taken as its bytes, so that the functions themselves check UTF-8.
//!
//! pgrx converts a `text` argument to `&str` before the function body runs, and in a database whose
//! encoding is not UTF-8 (SQL_ASCII with bytes above 0x7F, LATIN1, …) that conversion panics with a
//! message about pgrx's internals. Taking the bytes lets the functions say what is wrong and where.

use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// The bytes of a `text` argument, exactly as stored (the database's encoding).
#[derive(Debug, Clone, Copy)]
pub struct RawText<'fcx>(pub &'fcx [u8]);

impl<'fcx> RawText<'fcx> {
    /// The text as UTF-8, or where the first invalid byte is (1-based line and column, counted in
    /// characters of the valid prefix, like the rules compiler's diagnostics).
    pub fn to_utf8(self) -> Result<&'fcx str, InvalidUtf8> {
        std::str::from_utf8(self.0).map_err(|e| {
            let valid = std::str::from_utf8(&self.0[..e.valid_up_to()]).unwrap_or_default();
            let line = valid.matches('\n').count() + 1;
            let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            InvalidUtf8 {
                byte_offset: e.valid_up_to(),
                line,
                column,
            }
        })
    }
}

/// Where a text argument stops being UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8 {
    pub byte_offset: usize,
    pub line: usize,
    pub column: usize,
}

impl FromDatum for RawText<'_> {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        typoid: pg_sys::Oid,
    ) -> Option<Self> {
        // SAFETY: the argument is a `text` datum (the SQL signature says so), a varlena like bytea;
        // `&[u8]`'s conversion detoasts it and borrows the bytes for the call.
        unsafe { <&[u8] as FromDatum>::from_polymorphic_datum(datum, is_null, typoid) }.map(RawText)
    }
}

// SAFETY: unboxes through `FromDatum` as pgrx does for its own varlena types; NULL is reported as
// `Nullable::Null` (the functions take `Option<RawText>` and raise their own error for it).
unsafe impl<'fcx> ArgAbi<'fcx> for RawText<'fcx> {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: called by pgrx's wrapper with a live argument of this call.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: as above.
        unsafe { arg.unbox_arg_using_from_datum::<RawText<'fcx>>() }.into()
    }
}

pgrx::impl_sql_translatable!(RawText<'_>, arg_only = "text");
