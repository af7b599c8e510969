WITH c AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY counterparty_id ORDER BY last_updated DESC) AS rn FROM counterparty),
     a AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY address_id ORDER BY last_updated DESC) AS rn FROM address)
SELECT c.counterparty_id, c.counterparty_legal_name,
  a.address_line_1 AS counterparty_legal_address_line_1,
  a.address_line_2 AS counterparty_legal_address_line_2,
  a.district AS counterparty_legal_district,
  a.city AS counterparty_legal_city,
  a.postal_code AS counterparty_legal_postal_code,
  a.country AS counterparty_legal_country,
  a.phone AS counterparty_legal_phone_number
FROM c JOIN a ON c.legal_address_id = a.address_id AND a.rn = 1
WHERE c.rn = 1
