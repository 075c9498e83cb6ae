//! The real MIOpen and HIP functions, resolved lazily on the first intercepted call.
//!
//! `loader` finds the libraries already loaded in the process; `miopen` and `hip`
//! hold the typed function tables. Nothing here runs at library load time.

pub mod hip;
pub mod loader;
pub mod miopen;

/// Declares a struct of C function pointers resolved by name from a [`loader::Library`].
/// Fields marked `required` fail resolution when missing; `optional` ones become `None`.
macro_rules! fn_table {
    (
        $(#[$meta:meta])*
        pub struct $table:ident {
            $( $kind:ident $field:ident : fn($($arg:ty),* $(,)?) -> $ret:ty; )*
        }
    ) => {
        $(#[$meta])*
        #[allow(non_snake_case)]
        pub struct $table {
            $( pub $field: fn_table!(@ty $kind fn($($arg),*) -> $ret), )*
        }

        impl $table {
            #[allow(non_snake_case)]
            pub fn resolve(lib: &$crate::real::loader::Library) -> Result<Self, String> {
                Ok(Self {
                    $( $field: fn_table!(@get $kind lib, $field, fn($($arg),*) -> $ret), )*
                })
            }
        }
    };
    (@ty required fn($($arg:ty),*) -> $ret:ty) => { unsafe extern "C" fn($($arg),*) -> $ret };
    (@ty optional fn($($arg:ty),*) -> $ret:ty) => { Option<unsafe extern "C" fn($($arg),*) -> $ret> };
    (@get required $lib:ident, $field:ident, fn($($arg:ty),*) -> $ret:ty) => {{
        let p = $lib.symbol(stringify!($field))?;
        // SAFETY: the symbol is the C function of that name, declared with its C signature.
        unsafe { std::mem::transmute::<*mut std::ffi::c_void, unsafe extern "C" fn($($arg),*) -> $ret>(p) }
    }};
    (@get optional $lib:ident, $field:ident, fn($($arg:ty),*) -> $ret:ty) => {{
        $lib.symbol(stringify!($field)).ok().map(|p| {
            // SAFETY: as above.
            unsafe { std::mem::transmute::<*mut std::ffi::c_void, unsafe extern "C" fn($($arg),*) -> $ret>(p) }
        })
    }};
}
pub(crate) use fn_table;
