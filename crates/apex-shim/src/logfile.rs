//! Container log files. (Being written.)
