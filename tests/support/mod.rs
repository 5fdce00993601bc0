pub mod mock_logzio;
pub mod tools;
pub mod workspace;
