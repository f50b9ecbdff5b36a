pub mod convert;
pub mod encode;
pub mod generate;
pub mod inspect;
pub mod merge_lora;
pub mod mix;
pub mod random;
