//! Property tests of the wire boundary (issue: a fuzzed wire boundary). Placeholder module, to
//! be filled in: see the brief.
