mod config;
mod device;
mod migration;
