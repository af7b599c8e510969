WITH c AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY currency_id ORDER BY last_updated DESC) AS rn FROM currency)
SELECT currency_id, currency_code,
  CASE currency_code WHEN 'GBP' THEN 'British pound' WHEN 'USD' THEN 'US dollar' WHEN 'EUR' THEN 'Euro' ELSE currency_code END AS currency_name
FROM c WHERE rn = 1
