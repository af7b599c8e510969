SELECT
  CAST(payment_id AS VARCHAR) || '@' || CAST(last_updated AS VARCHAR) AS payment_record_id,
  payment_id,
  CAST(CAST(created_at AS TIMESTAMP) AS DATE) AS created_date,
  to_char(CAST(created_at AS TIMESTAMP), '%H:%M:%S%.3f') AS created_time,
  CAST(CAST(last_updated AS TIMESTAMP) AS DATE) AS last_updated_date,
  to_char(CAST(last_updated AS TIMESTAMP), '%H:%M:%S%.3f') AS last_updated_time,
  transaction_id, counterparty_id,
  CAST(payment_amount AS DECIMAL(12, 2)) AS payment_amount,
  currency_id, payment_type_id, paid,
  CAST(payment_date AS DATE) AS payment_date
FROM payment_new
