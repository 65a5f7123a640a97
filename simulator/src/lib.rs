//! A faithful fake of the five providers' list-calls APIs.
