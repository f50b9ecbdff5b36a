pub mod convert;
pub mod encode;
pub mod generate;
pub mod inspect;
pub mod mix;
pub mod random;
pub mod serve;
