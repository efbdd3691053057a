//! The dashboard of `databuild serve` (CONTRACT §11): every page's HTML over real HTTP, and the
//! pages in headless Chromium.

mod browser;
mod pages;
mod util;
