#![allow(dead_code)]

pub mod kv;
