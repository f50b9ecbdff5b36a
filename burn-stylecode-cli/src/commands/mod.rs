pub mod convert;
pub mod encode;
pub mod inspect;
