//! Provider clients, sync runner and webhook parsing.
