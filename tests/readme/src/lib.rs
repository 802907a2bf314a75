//! The README's code examples, compiled and run as doc-tests (`cargo test -p profit-readme`).
//! A separate crate, so that the conformance suite does not build every framework.

#![cfg_attr(doctest, doc = include_str!("../../../README.md"))]
