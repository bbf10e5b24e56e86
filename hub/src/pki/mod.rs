//! Who is who: the fleet CA (the only code that signs) and the operators the hub knows.

pub mod ca;
pub mod operators;
pub mod rotation;
