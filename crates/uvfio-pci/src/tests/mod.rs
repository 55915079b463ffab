mod config;
mod device;
